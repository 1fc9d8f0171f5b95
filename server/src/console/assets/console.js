// fieldsync admin console: small enhancements over plain HTML forms. Every
// page works without this script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Ask before forms that overwrite data (Retry).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Dim the fields of tables left out of the profile being edited.
  for (const fieldset of document.querySelectorAll("fieldset.table")) {
    const include = fieldset.querySelector("legend input[type=checkbox]");
    if (!include) continue;
    const sync = () => fieldset.classList.toggle("excluded", !include.checked);
    include.addEventListener("change", sync);
    sync();
  }
  // Apply a Sync Errors filter as soon as it is chosen.
  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.submit());
  }
  // Bring an invalid table of the profile editor into view.
  const invalid = document.querySelector("fieldset.invalid");
  if (invalid) invalid.scrollIntoView({ block: "center" });
});
