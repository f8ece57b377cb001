// Billing review page: server-side grid (paging, sorting, filters, search, totals) and decisions.
// Every value from the data is set with textContent: nothing from the data is ever parsed as HTML.
(function () {
  "use strict";
  var body = document.getElementById("review");
  if (!body) { return; }
  var api = body.dataset.api;
  var csrf = body.dataset.csrf;
  var pending = body.dataset.pending === "true";
  var state = readState();
  var selected = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, text, attrs) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    return node;
  }
  function value(v) { return v === null || v === undefined ? "" : v; }
  // a moment in the reader's own time zone, to the minute, the zone named: "8 Dec 2026, 01:42 CET"
  function when(iso) {
    if (!iso) { return ""; }
    return new Date(iso).toLocaleString(undefined, { day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
  }
  // money to 2 decimals with thousands separators (the server sends the page's texts; this only for the cost spans)
  function money(v) { return Number(v).toLocaleString("en-GB", { minimumFractionDigits: 2, maximumFractionDigits: 2 }); }

  function readState() {
    var params = new URLSearchParams(window.location.search);
    return {
      status: params.get("status") || "", kind: params.get("kind") || "", mapping: params.get("mapping") || "",
      customer: params.get("customer") || "", q: params.get("q") || "",
      flagged: params.get("flagged") === "true", needs_mapping: params.get("needs_mapping") === "true",
      sort: params.get("sort") || "seq", dir: params.get("dir") || "asc",
      page: Number(params.get("page") || 1), page_size: Number(body.dataset.pageSize || 50)
    };
  }
  function queryString(withPage) {
    var params = new URLSearchParams();
    ["status", "kind", "mapping", "customer", "q"].forEach(function (key) { if (state[key]) { params.set(key, state[key]); } });
    if (state.flagged) { params.set("flagged", "true"); }
    if (state.needs_mapping) { params.set("needs_mapping", "true"); }
    params.set("sort", state.sort);
    params.set("dir", state.dir);
    if (withPage) { params.set("page", String(state.page)); params.set("page_size", String(state.page_size)); }
    return params.toString();
  }
  function say(text, isError, target) {
    var node = $(target || "message");
    node.textContent = text;
    node.className = "message" + (isError ? " error" : " ok");
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) { throw new Error(data.detail || ("HTTP " + response.status)); }
        return data;
      });
    });
  }

  function load() {
    body.setAttribute("data-loading", "true");
    return getJSON(api + "/lines?" + queryString(true)).then(function (page) {
      renderRows(page.lines);
      renderTotals(page.totals);
      renderOneOff(page.one_off || []);
      renderCounts(page.counts);
      $("page-info").textContent = "page " + page.page + " of " + page.pages + " · " + page.matching + " of " + page.total_lines + " lines";
      $("page-prev").disabled = page.page <= 1;
      $("page-next").disabled = page.page >= page.pages;
      $("export-csv").setAttribute("href", api + "/export.csv?" + queryString(false));
      $("export-xlsx").setAttribute("href", api + "/export.xlsx?" + queryString(false));
      window.history.replaceState(null, "", "?" + queryString(true));
      markSort();
      body.setAttribute("data-loading", "false");
    }).catch(function (error) { body.setAttribute("data-loading", "false"); say(error.message, true); });
  }

  // One line per cell: the text cut by the stylesheet, the whole of it (and what used to be a second line) on hover.
  function cell(row, col, main, hint, cls) {
    var td = el("td", null, { "data-col": col });
    if (cls) { td.className = cls; }
    td.appendChild(document.createTextNode(String(value(main))));
    var whole = [value(main), value(hint)].filter(function (part) { return part !== ""; }).join(" · ");
    if (whole) { td.title = whole; }
    row.appendChild(td);
    return td;
  }

  // The filter's counts follow every decision (a decision re-plans lines: their statuses and mappings change).
  function renderCounts(counts) {
    if (!counts) { return; }
    [["filter-status", "status"], ["filter-kind", "kind"], ["filter-mapping", "mapping"]].forEach(function (pair) {
      var select = $(pair[0]);
      var chosen = select.value;
      var options = [el("option", "all", { "value": "" })];
      Object.keys(counts[pair[1]] || {}).forEach(function (key) {
        if (!key) { return; }
        var label = pair[1] === "kind" ? key.replace(/_/g, " ") : key;  // "adjust units", not the id adjust_units
        options.push(el("option", label + " (" + counts[pair[1]][key] + ")", { "value": key, "data-count": String(counts[pair[1]][key]) }));
      });
      if (chosen && !counts[pair[1]][chosen]) { options.push(el("option", chosen + " (0)", { "value": chosen, "data-count": "0" })); }
      select.replaceChildren.apply(select, options);
      select.value = chosen;
    });
  }

  // The line's detail opens right under its row (and scrolls into view), not at the top of a long page.
  function placeDetail(scroll) {
    var panel = $("line-detail");
    var holder = $("detail-row");
    var row = selected ? document.querySelector('#grid-body tr[data-action-id="' + CSS.escape(selected) + '"]') : null;
    if (!row || panel.hidden) {
      $("detail-home").appendChild(panel);
      if (holder) { holder.remove(); }
      return;
    }
    if (!holder) {
      holder = el("tr", null, { "id": "detail-row", "class": "detail-row", "data-testid": "detail-row" });
      holder.appendChild(el("td"));
    }
    holder.firstChild.colSpan = Array.prototype.filter.call(row.children, function (td) {
      return window.getComputedStyle(td).display !== "none";
    }).length;
    holder.firstChild.appendChild(panel);
    row.after(holder);
    if (scroll) { panel.scrollIntoView({ block: "nearest" }); }
  }

  function renderRows(lines) {
    var tbody = $("grid-body");
    $("detail-home").appendChild($("line-detail"));
    tbody.replaceChildren();
    lines.forEach(function (line) {
      var tr = el("tr", null, { "data-testid": "grid-row", "data-action-id": line.action_id, "data-status": line.status, "class": "status-" + line.status });
      cell(tr, "seq", line.seq, null, "num");
      cell(tr, "customer", line.customer, line.account_id).setAttribute("data-testid", "cell-customer");
      cell(tr, "product", line.product, line.sku);
      var change = cell(tr, "unit_change", line.change);
      change.setAttribute("data-testid", "cell-change");
      change.title = line.kind_label + ": " + line.change;
      var t = line.text || {};
      var price = cell(tr, "unit_price", t.unit_price ? t.unit_price + " " + line.currency : "", "BSS " + (t.bss_unit_price || "–") + " · Autotask " + (t.autotask_unit_price || "–"), "num");
      price.setAttribute("data-testid", "cell-unit-price");
      if (line.below_cost) {
        price.appendChild(document.createTextNode(" "));
        price.appendChild(el("span", "below cost", { "class": "badge status-blocked", "title": "sold below cost: price " + t.unit_price + ", cost " + t.unit_cost }));
      }
      cell(tr, "unit_cost", t.unit_cost ? t.unit_cost + " " + line.currency : "", "BSS " + (t.bss_unit_cost || "–") + " · Autotask " + (t.autotask_unit_cost || "–"), "num").setAttribute("data-testid", "cell-unit-cost");
      cell(tr, "billed_change", t.billed_change, null, "num").setAttribute("data-testid", "cell-billed");
      cell(tr, "cost_change", t.cost_change, null, "num").setAttribute("data-testid", "cell-cost");
      cell(tr, "margin_change", t.margin_change, null, "num").setAttribute("data-testid", "cell-margin");
      var status = cell(tr, "status", "", line.line_approved_by ? "line approved by " + line.line_approved_by : null);
      status.setAttribute("data-testid", "cell-status");
      status.replaceChildren(el("span", line.status, { "class": "badge status-" + line.status }));
      if (line.line_approved_by) { status.appendChild(document.createTextNode(" ✓")); }
      status.title = line.status + (line.line_approved_by ? " · line approved by " + line.line_approved_by : "");
      var mapping = cell(tr, "mapping", "", line.mapping_detail || line.mapping);
      if (line.mapping) { mapping.replaceChildren(el("span", line.mapping, { "class": "badge" })); }
      cell(tr, "reason", line.reason, null, "reason");
      cell(tr, "subscription", line.subscription, line.contract);
      cell(tr, "billing_period", [line.billing_period, line.commitment].filter(Boolean).join(" · "));
      cell(tr, "bss_units", (line.text || {}).bss_units, null, "num");
      cell(tr, "autotask_units", (line.text || {}).autotask_units, null, "num");
      cell(tr, "effective_date", line.effective_date);
      if (selected === line.action_id) { tr.classList.add("selected"); }
      tbody.appendChild(tr);
    });
    placeDetail(false);
  }

  function renderTotals(totals) {
    $("totals-lines").textContent = totals.lines;
    $("totals-counted").textContent = totals.counted_lines;
    $("totals-units-added").textContent = totals.units_text.added;
    $("totals-units-removed").textContent = totals.units_text.removed;
    var cost = $("totals-cost");
    cost.replaceChildren();
    Object.keys(totals.cost).forEach(function (currency) {
      var m = totals.cost[currency];
      cost.appendChild(el("span", currency + " cost +" + money(m.cost_added) + " / −" + money(m.cost_removed) + " per month", { "class": "money", "data-currency": currency }));
      cost.appendChild(document.createTextNode(" "));
    });
    var rows = $("totals-money-body");
    rows.replaceChildren();
    Object.keys(totals.money).forEach(function (currency) {
      Object.keys(totals.buckets).forEach(function (bucket) {
        var m = totals.money[currency][bucket];
        var tr = el("tr", null, { "data-testid": "money-row", "data-currency": currency, "data-bucket": bucket });
        cell(tr, "money", currency);
        cell(tr, "money", totals.buckets[bucket]);
        cell(tr, "money", m.lines, null, "num");
        cell(tr, "money", m.text.billed, null, "num").setAttribute("data-testid", "money-billed");
        cell(tr, "money", m.text.cost, null, "num").setAttribute("data-testid", "money-cost");
        cell(tr, "money", m.text.margin, null, "num").setAttribute("data-testid", "money-margin");
        rows.appendChild(tr);
      });
    });
  }

  // the month's one-off charges (setup fees) of the filter's customer: shown, not posted yet
  function renderOneOff(charges) {
    var tbody = $("one-off-body");
    if (!tbody) { return; }
    tbody.replaceChildren();
    if (!charges.length) {
      var empty = el("tr");
      empty.appendChild(el("td", "No one-off charges this month.", { "colspan": "8" }));
      tbody.appendChild(empty);
      return;
    }
    charges.forEach(function (charge) {
      var tr = el("tr", null, { "data-testid": "one-off-row", "data-charge-id": charge.charge_id });
      cell(tr, "one-off", charge.customer, charge.account_id);
      cell(tr, "one-off", charge.subscription);
      cell(tr, "one-off", charge.product, charge.sku);
      cell(tr, "one-off", charge.effective_date);
      cell(tr, "one-off", charge.text.quantity, null, "num");
      cell(tr, "one-off", charge.text.unit_price + " " + charge.currency, null, "num");
      cell(tr, "one-off", charge.text.amount + " " + charge.currency, null, "num");
      cell(tr, "one-off", charge.state);
      tbody.appendChild(tr);
    });
  }

  function markSort() {
    Array.prototype.forEach.call(document.querySelectorAll("button.sort"), function (button) {
      var label = button.textContent.replace(/ [▲▼]$/, "");
      button.textContent = label + (button.dataset.sort === state.sort ? (state.dir === "desc" ? " ▼" : " ▲") : "");
    });
  }

  // -- decisions ----------------------------------------------------------------------------------------------

  function decide(payload) {
    say("saving…", false, "detail-message");
    return fetch(api + "/decisions", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-Billing-CSRF": csrf },
      body: JSON.stringify(payload)
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) { throw new Error(data.detail || ("HTTP " + response.status)); }
        return data;
      });
    }).then(function (result) {
      // an exclusion takes the lines that depend on the line with it (an include brings them back): say how many
      var withOthers = result.dependents && result.dependents.length ? " Line " + result.message + "." : "";
      say("Saved: " + result.decision + "." + withOthers + " The plan is up to date.", false, "detail-message");
      body.setAttribute("data-last-decision", result.decision);
      return Promise.all([load(), loadDecisions()]).then(function () {
        if (!selected) { return; }
        return getJSON(api + "/lines/" + encodeURIComponent(selected)).then(function () {
          return showDetail(selected, true);
        }, function () {
          // re-planning replaced the line (its content changed, so its id did): the grid shows the new line
          selected = null;
          $("detail-title").textContent = "";
          $("detail-reason").textContent = "";
          $("detail-line-actions").replaceChildren();
          $("detail-sources").replaceChildren();
          say("Saved: " + result.decision + ". The line was planned again with a new id: pick it in the grid to go on.", false, "detail-message");
        });
      });
    }).catch(function (error) { say(error.message, true, "detail-message"); });
  }

  function button(label, testid, onClick, disabled) {
    var b = el("button", label, { "type": "button", "data-testid": testid });
    b.disabled = !!disabled || !pending;
    b.addEventListener("click", onClick);
    return b;
  }

  function showDetail(actionId, keepMessage) {
    selected = actionId;
    return getJSON(api + "/lines/" + encodeURIComponent(actionId)).then(function (detail) {
      var line = detail.line;
      var panel = $("line-detail");
      panel.hidden = false;
      panel.setAttribute("data-action-id", line.action_id);
      $("detail-title").textContent = line.kind_label + " · " + line.customer + " · " + (line.subscription || line.product || line.account_id) + " · " + line.status;
      $("detail-reason").textContent = line.reason || "";
      var actions = $("detail-line-actions");
      actions.replaceChildren();
      var open = ["proposed", "flagged", "needs-mapping", "blocked"].indexOf(line.status) >= 0;
      if (open) { actions.appendChild(button("Exclude from this month", "decide-exclude", function () { decide({ decision: "exclude", action_id: line.action_id }); })); }
      if (line.status === "excluded") { actions.appendChild(button("Include again", "decide-include", function () { decide({ decision: "include", action_id: line.action_id }); })); }
      if (line.status === "flagged" && !line.line_approved_by) { actions.appendChild(button("Approve this flagged line", "decide-approve-line", function () { decide({ decision: "approve_line", action_id: line.action_id }); })); }
      if (line.line_approved_by) { actions.appendChild(button("Take back the line approval (" + line.line_approved_by + ")", "decide-unapprove-line", function () { decide({ decision: "unapprove_line", action_id: line.action_id }); })); }
      var sources = $("detail-sources");
      sources.replaceChildren();
      detail.sources.forEach(function (source) { sources.appendChild(renderSource(source)); });
      if (!keepMessage) { say("", false, "detail-message"); }
      placeDetail(!keepMessage);
    }).catch(function (error) { say(error.message, true, "detail-message"); });
  }

  function renderSource(source) {
    var box = el("div", null, { "class": "source", "data-testid": "source-" + source.kind, "data-source-key": source.source_key });
    box.appendChild(el("h3", source.source_noun + " " + source.source_key + " (" + source.source_name + ") → " + source.kind));
    var current = source.target_id === null ? "not linked (" + source.state + ")" : source.kind + " " + source.target_id + " " + value(source.target_name) + " (" + source.state + ")";
    box.appendChild(el("p", "Now: " + current + (source.flag ? " · flag: " + source.flag : "")));
    var list = el("ul", null, { "class": "suggestions" });
    source.suggestions.forEach(function (s) {
      var li = el("li", null, { "data-testid": "suggestion", "data-target-id": String(s.target_id), "data-status": s.status });
      li.appendChild(el("span", s.target_name + " (" + s.target_id + ") · score " + Math.round(s.score) + " % · " + value(s.reason) + (s.status === "rejected" ? " · rejected" : "")));
      if (s.status === "open") {
        li.appendChild(button("Confirm", "confirm-suggestion", function () { decide({ decision: "confirm_suggestion", kind: source.kind, source_key: source.source_key, target_id: s.target_id }); }));
        li.appendChild(button("Reject", "reject-suggestion", function () { decide({ decision: "reject_suggestion", kind: source.kind, source_key: source.source_key, target_id: s.target_id }); }));
      }
      list.appendChild(li);
    });
    box.appendChild(list);
    var plural = { "company": "companies", "contract": "contracts", "service": "services" }[source.kind] || source.kind;
    var search = el("input", null, { "type": "search", "class": "target-search", "placeholder": "Find Autotask " + plural + ": name, number or id", "title": "Search the Autotask " + plural + " of this run's snapshot", "data-testid": "target-search-" + source.kind });
    search.disabled = !pending;
    var results = el("ul", null, { "class": "targets", "data-testid": "target-results-" + source.kind });
    var timer = null;
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        if (!search.value.trim()) { results.replaceChildren(); return; }
        getJSON(api + "/targets?kind=" + encodeURIComponent(source.kind) + "&q=" + encodeURIComponent(search.value)).then(function (data) {
          results.replaceChildren();
          data.targets.forEach(function (t) {
            var li = el("li", null, { "data-testid": "target-result", "data-target-id": String(t.id) });
            li.appendChild(el("span", t.name + " (" + t.id + (t.number ? ", " + t.number : "") + ")" + (t.active ? "" : " · inactive"), { "class": "target-name" }));
            if (source.kind === "company") { li.appendChild(el("span", companyParticulars(t), { "class": "hint", "data-testid": "target-particulars" })); }
            li.appendChild(button("Link", "link-target", function () { decide({ decision: "link", kind: source.kind, source_key: source.source_key, target_id: t.id }); }));
            results.appendChild(li);
          });
        }).catch(function (error) { say(error.message, true, "detail-message"); });
      }, 250);
    });
    box.appendChild(search);
    box.appendChild(results);
    if (source.target_id === null) {
      box.appendChild(button("Create in Autotask", "create-in-autotask", function () { decide({ decision: "create", kind: source.kind, source_key: source.source_key }); }));
    }
    return box;
  }

  // what tells two companies of one name apart: where they are, their contracts, the BSS accounts linked to them
  function companyParticulars(t) {
    var place = [t.address, t.city].filter(function (part) { return part; }).join(", ") || "no address in Autotask";
    var contracts = t.active_contracts === 1 ? "1 active contract" : (t.active_contracts || "no") + " active contracts";
    var linked = t.linked_accounts && t.linked_accounts.length ? "linked to BSS " + t.linked_accounts.join(", ") : "no BSS account linked";
    return " · " + place + " · " + contracts + " · " + linked + " ";
  }

  function loadDecisions() {
    return getJSON(api + "/decisions").then(function (data) {
      var tbody = $("decisions-body");
      tbody.replaceChildren();
      data.decisions.forEach(function (d) {
        var tr = el("tr", null, { "data-testid": "decision-row" });
        [when(d.decided_at_utc), d.decided_by, d.label, d.what, d.outcome].forEach(function (text) { tr.appendChild(el("td", text)); });
        tbody.appendChild(tr);
      });
    }).catch(function (error) { say(error.message, true); });
  }

  // -- wiring -------------------------------------------------------------------------------------------------

  $("filters").addEventListener("submit", function (event) {
    event.preventDefault();
    state.status = $("filter-status").value;
    state.kind = $("filter-kind").value;
    state.mapping = $("filter-mapping").value;
    state.customer = $("filter-customer").value.trim();
    state.q = $("search").value.trim();
    state.flagged = $("filter-flagged").checked;
    state.needs_mapping = $("filter-needs-mapping").checked;
    state.page = 1;
    load();
  });
  ["filter-status", "filter-kind", "filter-mapping", "filter-flagged", "filter-needs-mapping"].forEach(function (id) {
    $(id).addEventListener("change", function () { $("filters").requestSubmit(); });
  });
  Array.prototype.forEach.call(document.querySelectorAll("button.sort"), function (b) {
    b.addEventListener("click", function () {
      if (state.sort === b.dataset.sort) { state.dir = state.dir === "asc" ? "desc" : "asc"; } else { state.sort = b.dataset.sort; state.dir = "asc"; }
      state.page = 1;
      load();
    });
  });
  $("page-prev").addEventListener("click", function () { if (state.page > 1) { state.page -= 1; load(); } });
  $("page-next").addEventListener("click", function () { state.page += 1; load(); });
  $("grid-body").addEventListener("click", function (event) {
    var row = event.target.closest("tr[data-action-id]");
    if (!row) { return; }
    Array.prototype.forEach.call(document.querySelectorAll("#grid-body tr.selected"), function (r) { r.classList.remove("selected"); });
    row.classList.add("selected");
    showDetail(row.getAttribute("data-action-id"));
  });
  // The column chooser: the deciding columns show by default, the others on demand; the choice stays in the browser.
  var COLUMNS_KEY = "billing-review-columns";
  function chosenColumns() {
    try { return JSON.parse(window.localStorage.getItem(COLUMNS_KEY) || "{}") || {}; } catch (error) { return {}; }
  }
  function showColumns() {
    var chosen = chosenColumns();
    Array.prototype.forEach.call(document.querySelectorAll("#column-chooser input[data-col]"), function (box) {
      var col = box.dataset.col;
      var shown = col in chosen ? !!chosen[col] : box.dataset["default"] === "shown";
      box.checked = shown;
      $("grid").classList.toggle("hide-" + col, !shown);
    });
    placeDetail(false);
  }
  Array.prototype.forEach.call(document.querySelectorAll("#column-chooser input[data-col]"), function (box) {
    box.addEventListener("change", function () {
      var chosen = chosenColumns();
      chosen[box.dataset.col] = box.checked;
      try { window.localStorage.setItem(COLUMNS_KEY, JSON.stringify(chosen)); } catch (error) { /* private mode */ }
      showColumns();
    });
  });
  showColumns();

  // Keyboard: ↑/↓ move to the previous/next line and open it, Enter opens the line, and one key per decision on the
  // open line: x exclude, i include again, a approve the flagged line, c confirm its first suggestion.
  var decisionKeys = { "x": "decide-exclude", "i": "decide-include", "a": "decide-approve-line", "c": "confirm-suggestion" };
  function openRow(row) {
    if (!row) { return; }
    Array.prototype.forEach.call(document.querySelectorAll("#grid-body tr.selected"), function (r) { r.classList.remove("selected"); });
    row.classList.add("selected");
    showDetail(row.getAttribute("data-action-id"));
  }
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, select, textarea, button")) { return; }
    var rowsShown = Array.prototype.slice.call(document.querySelectorAll("#grid-body tr[data-action-id]"));
    var current = rowsShown.findIndex(function (r) { return r.getAttribute("data-action-id") === selected; });
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      openRow(rowsShown[Math.max(0, Math.min(rowsShown.length - 1, current + (event.key === "ArrowDown" ? 1 : -1)))]);
    } else if (event.key === "Enter" && current < 0 && rowsShown.length) {
      openRow(rowsShown[0]);
    } else if (decisionKeys[event.key] && selected) {
      var target = document.querySelector('#line-detail [data-testid="' + decisionKeys[event.key] + '"]:not([disabled])');
      if (target) { event.preventDefault(); target.click(); }
    }
  });
  loadDecisions();
  body.setAttribute("data-ready", "true");
})();
