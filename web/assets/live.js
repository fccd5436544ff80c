// live.js keeps a job page up to date from its job's live stream
// (GET /jobs/{jobId}/live, server-sent events; docs/api.md): new progress
// rows, the status badge, the steps' badges and runs. When the job has
// nothing left to wait for the page reloads, to show the result and the
// chain. Without script the page's <noscript> refresh does the same, by
// reloading every 2 seconds.
(function () {
  'use strict';
  var live = document.getElementById('live');
  if (!live || !window.EventSource) return;
  var src = live.getAttribute('data-src');
  var eventId = live.getAttribute('data-event-id');
  var note = document.getElementById('live-state');
  var list = document.getElementById('progress');
  var done = false;
  var es = new EventSource(src);

  // say shows the stream's state; data-stream holds it for scripts
  // (open, closed, reconnecting).
  function say(text, stream) {
    if (note) note.textContent = text;
    if (stream) live.setAttribute('data-stream', stream);
  }

  // timeEl is the pages' own time: relative text (console.js keeps it
  // current), the absolute UTC time on hover.
  function timeEl(iso) {
    var d = new Date(iso);
    var t = document.createElement('time');
    if (isNaN(d.getTime())) {
      t.textContent = String(iso);
      return t;
    }
    t.setAttribute('datetime', d.toISOString());
    t.title = d.toISOString().slice(0, 19).replace('T', ' ') + ' UTC';
    t.textContent = 'just now';
    return t;
  }

  function reload() {
    if (done) return;
    done = true;
    es.close();
    window.location.reload();
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function addProgress(rows) {
    if (!list) return;
    var have = list.children.length;
    rows.forEach(function (p) {
      if (p.index < have) return; // the page has it already
      var li = el('li');
      li.setAttribute('data-type', p.type);
      var at = el('span', 'muted');
      at.appendChild(timeEl(p.timestamp));
      li.append(at, ' ', el('span', 'ptype pt-' + p.type, p.type), ' ' + p.text);
      list.appendChild(li);
      have++;
    });
    var none = document.getElementById('no-progress');
    if (have > 0 && none) none.remove();
  }

  function setStep(s) {
    var li = document.querySelector('li.step[data-step="' + s.name + '"]');
    if (!li) return;
    var ran = s.status !== 'pending';
    li.className = 'step step-' + s.status;
    li.setAttribute('data-status', s.status);
    li.setAttribute('data-runs', String(s.runs));
    var badge = li.querySelector('.step-head .badge');
    if (badge) {
      badge.className = 'badge st-' + (ran ? s.status : 'none');
      badge.textContent = ran ? s.status : 'not run';
    }
    if (!ran) return;
    var runs = li.querySelector('.runs');
    if (runs) {
      runs.textContent = String(s.runs);
      return;
    }
    // A step that had not run when the page was rendered.
    var meta = el('div', 'step-meta');
    meta.append('runs ', el('b', 'runs', String(s.runs)), ' · attempt ', el('b', '', String(s.attempt)));
    li.appendChild(meta);
  }

  function text(id, value) {
    var e = document.getElementById(id);
    if (e) e.textContent = value;
  }

  // apply shows one event; false when the page is out of date.
  function apply(msg) {
    var ev = JSON.parse(msg.data);
    if (ev.deleted || ev.eventId !== eventId) {
      reload(); // deleted, or another run started: the page tells of an old one
      return false;
    }
    addProgress(ev.progress);
    var badge = document.getElementById('job-status');
    if (badge) {
      badge.className = 'badge st-' + ev.status;
      badge.textContent = ev.status;
    }
    ev.steps.forEach(setStep);
    text('attempts', String(ev.attempts));
    var upd = document.getElementById('updated-at');
    if (upd) upd.replaceChildren(timeEl(ev.updatedAt));
    return true;
  }

  es.addEventListener('open', function () {
    say('(connected)', 'open');
  });
  es.addEventListener('job', function (msg) {
    // The pages' own time, relative and ticking (console.js), not the
    // browser's locale format.
    if (apply(msg) && note) note.replaceChildren('(updated ', timeEl(new Date().toISOString()), ')');
  });
  es.addEventListener('end', function (msg) {
    es.close();
    apply(msg);
    say('(finished: reloading)', 'closed');
    reload();
  });
  es.addEventListener('error', function () {
    if (done) return;
    if (es.readyState === EventSource.CLOSED) {
      // Refused (signed out, job gone, store down, or too many streams
      // open: 429, Retry-After 30 s): reload later, as the page without
      // script would, but not so soon that refused pages load the job
      // more often than their streams would have read it.
      say('(stream refused: reloading in 30 s)', 'closed');
      setTimeout(reload, 30000);
      return;
    }
    say('(reconnecting)', 'reconnecting');
  });
})();
