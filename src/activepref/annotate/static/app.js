// Keyboard shortcuts for the annotation form: 1 = A, 2 = B, 3 = tie, s = skip.
// The page works without this file; it only presses the matching button.
(function () {
  "use strict";
  var sent = false;
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.isContentEditable)) return;
    var button = document.querySelector('button[data-key="' + event.key.toLowerCase() + '"]');
    if (!button || sent) return;
    event.preventDefault();
    sent = true;  // one label per page: a held or repeated key does not submit twice
    if (button.form.requestSubmit) button.form.requestSubmit(button); else button.click();
  });
})();
