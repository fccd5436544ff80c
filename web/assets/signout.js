// signout.js replaces the browser's cached Basic credentials with a user
// that matches none (HTTP Basic has no sign-out of its own): an
// XMLHttpRequest given a user and password is the one way a page can make
// the browser cache others. The next page then asks for a login.
(function () {
  'use strict';
  var note = document.getElementById('signout-state');
  var xhr = new XMLHttpRequest();
  xhr.open('GET', '/signin?probe=1', true, 'signed-out', 'signed-out');
  xhr.onloadend = function () {
    if (note) {
      note.textContent = 'Done: this browser no longer sends your login.';
      note.setAttribute('data-done', 'true');
    }
  };
  xhr.send();
})();
