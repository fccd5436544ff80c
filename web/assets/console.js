// console.js keeps the operator's pages current without reloading them:
// relative times ("3 min ago", "in 40 s") tick, and a page that marks
// parts of itself data-live (the job list, its counts) has those parts
// replaced every 10 seconds from a fresh copy of the same URL, leaving
// everything else (the filters being typed in, the scroll position) as it
// is. Without script the page is still whole; it is only not refreshed.
(function () {
  'use strict';

  // rel is the server's relTime (web/pages.go) in the browser.
  function rel(t, now) {
    var d = (now - t) / 1000, future = d < 0, s;
    if (future) d = -d;
    if (d < 5 && !future) return 'just now';
    if (d < 60) s = Math.floor(d) + ' s';
    else if (d < 3600) s = Math.floor(d / 60) + ' min';
    else if (d < 48 * 3600) s = Math.floor(d / 3600) + ' h';
    else if (d < 7 * 86400) s = Math.floor(d / 86400) + ' days';
    else return null; // a date: the server's text stays
    return future ? 'in ' + s : s + ' ago';
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll('time[datetime]').forEach(function (el) {
      var t = Date.parse(el.getAttribute('datetime'));
      if (isNaN(t)) return;
      var text = rel(t, now);
      if (text !== null && el.textContent !== text) el.textContent = text;
    });
  }
  setInterval(tick, 1000);

  var parts = document.querySelectorAll('[data-live]');
  if (!parts.length || !window.fetch || !window.DOMParser) return;
  var every = 10000;
  var state = document.body;

  function refresh() {
    fetch(window.location.href, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
      .then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html');
        document.querySelectorAll('[data-live]').forEach(function (el) {
          var next = fresh.getElementById(el.id);
          if (next) el.innerHTML = next.innerHTML;
        });
        tick();
        var n = Number(state.getAttribute('data-refreshes') || '0') + 1;
        state.setAttribute('data-refreshes', String(n));
        state.removeAttribute('data-refresh-error');
      })
      .catch(function (err) {
        state.setAttribute('data-refresh-error', String(err));
      })
      .finally(function () { setTimeout(refresh, every); });
  }
  var wanted = Number(state.getAttribute('data-refresh-ms'));
  if (wanted > 0) every = wanted;
  setTimeout(refresh, every);
})();
