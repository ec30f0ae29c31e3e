(function () {
  var live = document.getElementById('live');
  function mark(state) { if (live) { live.setAttribute('data-live', state); live.textContent = state; } }
  // The unit the address points at (#events-ID) stays highlighted when a
  // fresh <main> replaces the one :target matched.
  function markTarget() {
    document.querySelectorAll('.targeted').forEach(function (e) { e.classList.remove('targeted'); });
    var id = decodeURIComponent(location.hash.slice(1));
    var t = id && document.getElementById(id);
    if (t) { t.classList.add('targeted'); }
  }
  window.addEventListener('hashchange', markTarget);
  markTarget();
  if (!window.EventSource) { mark('no EventSource'); return; }
  var es = new EventSource('{EVENTS}');
  es.onopen = function () { mark('open'); };
  es.onerror = function () { mark('error'); };
  es.addEventListener('status', function (e) {
    var old = document.getElementById('{MAIN}');
    if (!old) { return; }
    var t = document.createElement('template');
    t.innerHTML = e.data;
    var fresh = t.content.getElementById('{MAIN}');
    if (fresh) { old.replaceWith(fresh); markTarget(); }
  });
})();
