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
  // Show stored times in the browser's time zone and language.
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  for (const t of document.querySelectorAll("time.local[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!Number.isNaN(d.getTime())) t.textContent = format.format(d);
  }
  // Bring an invalid table of the profile editor into view.
  const invalid = document.querySelector("fieldset.invalid");
  if (invalid) invalid.scrollIntoView({ block: "center" });
});

// The structured row-rule form of the profile editor: kind, column,
// operator and value (or the related table and its column) become the
// rule's JSON line in the table's rules box, the same JSON an
// administrator would type. Without this script the box is edited by hand.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form.editor[data-model]");
  if (!form) return;
  let model;
  try { model = JSON.parse(form.dataset.model); } catch { return; }
  const OPS = [
    ["eq", "=", "value"], ["ne", "≠", "value"], ["gt", ">", "value"], ["ge", "≥", "value"],
    ["lt", "<", "value"], ["le", "≤", "value"], ["in", "is one of (comma-separated)", "values"],
    ["not_in", "is none of (comma-separated)", "values"], ["is_null", "is empty", "none"],
    ["not_null", "is set", "none"], ["begins_with", "begins with", "text"], ["ends_with", "ends with", "text"],
    ["contains", "contains", "text"], ["eq_current_user", "is the user", "none"],
    ["eq_current_team", "is the user's team", "none"], ["today", "is today", "none"],
    ["yesterday", "is yesterday", "none"], ["tomorrow", "is tomorrow", "none"],
    ["last_days", "is in the last N days", "days"], ["next_days", "is in the next N days", "days"],
    ["on_or_after_today", "is today or later", "none"], ["this_month", "is this month", "none"],
    ["last_month", "is last month", "none"], ["next_month", "is next month", "none"],
  ];
  const el = (tag, attrs = {}, children = []) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    for (const c of children) e.append(c);
    return e;
  };
  const options = (select, items) => {
    select.replaceChildren(...items.map(([value, label]) => el("option", { value }, [label])));
  };
  // A typed value as the column's kind reads it; throws with a message.
  const typed = (text, kind) => {
    const t = text.trim();
    if (kind === "integer") {
      if (!/^-?\d+$/.test(t)) throw new Error(`'${text}' is not a whole number`);
      return Number(t);
    }
    if (kind === "real") {
      if (t === "" || !Number.isFinite(Number(t))) throw new Error(`'${text}' is not a number`);
      return Number(t);
    }
    if (kind === "boolean") {
      if (t === "true" || t === "false") return t === "true";
      throw new Error(`'${text}' is not true or false`);
    }
    return text;
  };
  for (const builder of form.querySelectorAll(".rule-builder")) {
    const table = builder.dataset.table;
    const columns = model[table] || [];
    const box = form.querySelector(`textarea[name="rules:${CSS.escape(table)}"]`);
    if (!box) continue;
    const kind = el("select", { class: "rb-kind", "aria-label": "Rule kind" });
    options(kind, [["all", "Every row"], ["owned", "Rows assigned to the user"],
      ["related", "Rows related to another table"], ["custom", "Rows matching a condition"]]);
    const column = el("select", { class: "rb-column", "aria-label": "Column" });
    options(column, columns.map((c) => [c.name, `${c.name} (${c.kind})`]));
    const op = el("select", { class: "rb-op", "aria-label": "Operator" });
    options(op, OPS.map(([o, label]) => [o, label]));
    const value = el("input", { class: "rb-value", type: "text", "aria-label": "Value", placeholder: "value" });
    const other = el("select", { class: "rb-table", "aria-label": "Related table" });
    options(other, Object.keys(model).map((t) => [t, t]));
    const foreign = el("select", { class: "rb-foreign", "aria-label": "Column of the related table" });
    const fillForeign = () => options(foreign, (model[other.value] || []).map((c) => [c.name, c.name]));
    other.addEventListener("change", fillForeign);
    fillForeign();
    const add = el("button", { type: "button", class: "rb-add" }, ["Add rule"]);
    const problem = el("span", { class: "rb-error", role: "alert" });
    const parts = {
      column: el("label", {}, ["column ", column]),
      op: el("label", {}, ["operator ", op]),
      value: el("label", {}, ["value ", value]),
      other: el("label", {}, ["of table ", other]),
      foreign: el("label", {}, ["column ", foreign]),
    };
    const sync = () => {
      const k = kind.value;
      const shape = (OPS.find(([o]) => o === op.value) || [])[2];
      parts.column.hidden = k === "all";
      parts.op.hidden = k !== "custom";
      parts.value.hidden = k !== "custom" || shape === "none";
      value.placeholder = shape === "days" ? "days" : shape === "values" ? "a, b, c" : "value";
      parts.other.hidden = k !== "related";
      parts.foreign.hidden = k !== "related";
      problem.textContent = "";
    };
    kind.addEventListener("change", sync);
    op.addEventListener("change", sync);
    add.addEventListener("click", () => {
      let rule;
      try {
        const col = column.value;
        const colKind = (columns.find((c) => c.name === col) || {}).kind || "text";
        switch (kind.value) {
          case "all": rule = { kind: "all" }; break;
          case "owned": rule = { kind: "owned", column: col }; break;
          case "related": rule = { kind: "related", table: other.value, column: col, foreign_column: foreign.value }; break;
          default: {
            const [o, , shape] = OPS.find(([x]) => x === op.value);
            const filter = { op: o, column: col };
            if (shape === "value") filter.value = typed(value.value, colKind);
            if (shape === "text") filter.value = value.value;
            if (shape === "values") filter.values = value.value.split(",").map((v) => typed(v, colKind));
            if (shape === "days") {
              const n = typed(value.value, "integer");
              if (n < 0) throw new Error("days must not be negative");
              filter.days = n;
            }
            rule = { kind: "custom", filter };
          }
        }
      } catch (e) {
        problem.textContent = e.message;
        return;
      }
      problem.textContent = "";
      const lines = box.value.split("\n").filter((l) => l.trim() !== "");
      lines.push(JSON.stringify(rule));
      box.value = lines.join("\n");
      box.rows = Math.min(Math.max(lines.length + 1, 3), 11);
      const include = form.querySelector(`legend input[value="${CSS.escape(table)}"]`);
      if (include && !include.checked) include.click();
    });
    builder.append(el("span", { class: "label" }, ["Add a rule: "]), kind, parts.column, parts.op,
      parts.value, parts.other, parts.foreign, add, problem);
    builder.hidden = false;
    sync();
  }
});
