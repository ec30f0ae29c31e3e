(function () {
  var live = document.getElementById('live');
  function mark(state) { if (live) { live.setAttribute('data-live', state); live.textContent = state; } }
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
    if (fresh) { old.replaceWith(fresh); }
  });
})();
