// flagship UI: the little JavaScript the pages need (the CSP allows no inline script).
// Everything works without it: forms post normally and the server renders the result.
(function () {
  "use strict";

  // Plain (non-htmx) forms and buttons that ask before doing something drastic.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = event.submitter;
    var message = (button && button.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (message && !form.hasAttribute("hx-post") && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  // The environment switcher follows a change of selection only for pointer users: a
  // keyboard user moving through the options must not be sent away on the first arrow key.
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select.matches && select.matches("select[data-autosubmit]") && select.dataset.pointer === "1") {
      select.form.submit();
    }
  });
  document.addEventListener("pointerdown", function (event) {
    var select = event.target.closest && event.target.closest("select[data-autosubmit]");
    if (select) { select.dataset.pointer = "1"; }
  });
  document.addEventListener("keydown", function (event) {
    var select = event.target.closest && event.target.closest("select[data-autosubmit]");
    if (select) { select.dataset.pointer = "0"; }
  });

  // After htmx swaps an error summary in, move the focus to it so it is announced.
  document.addEventListener("htmx:afterSwap", function (event) {
    var summary = event.detail.target.querySelector && event.detail.target.querySelector(".error-summary, .stale");
    if (summary) {
      summary.setAttribute("tabindex", "-1");
      summary.focus();
    }
  });
})();
