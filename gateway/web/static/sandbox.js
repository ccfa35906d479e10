// The sandbox page: send the text area (or a file) to the sandbox API and show what came back.
// Everything received is put in the page as text (textContent), never as markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const statusLine = $("status");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // The code is text, and its meaning is spelt out beside it: nothing is told by colour alone.
  const ACK_MEANING = { AA: "accepted", AE: "accepted with errors", AR: "rejected" };
  function ack(code) {
    return el("span", { class: "ack ack-" + code, text: code });
  }
  function meaning(code) {
    return el("span", { class: "ack-meaning", text: " — " + (ACK_MEANING[code] || "unknown outcome") });
  }

  function details(summary, body) {
    return el("details", {}, el("summary", { text: summary }), el("pre", { class: "json", text: body }));
  }

  // -- the samples list fills the text area ------------------------------------------------------
  $("samples").addEventListener("change", (event) => {
    const option = event.target.selectedOptions[0];
    if (option) $("message").value = option.dataset.text;
  });

  // Typed text is sent as UTF-8 and says so (the server re-encodes it as MSH-18 declares); a file is sent
  // as its own bytes, exactly as a sender's engine would send them.
  // A bearer token given on the page wins; else the signed-in session's cookie goes with the call, and a
  // POST carries the session's CSRF token (the server refuses a state-changing call without it).
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  function withToken(headers) {
    const token = $("token").value.trim();
    if (token) return { ...headers, Authorization: "Bearer " + token };
    return csrf ? { ...headers, "X-CSRF-Token": csrf } : headers;
  }

  async function post(url, body) {
    const media = typeof body === "string" ? "text/plain; charset=utf-8" : "text/plain";
    const answer = await fetch(url, { method: "POST", headers: withToken({ "Content-Type": media }), body });
    const type = answer.headers.get("content-type") || "";
    const data = type.includes("json") ? await answer.json() : await answer.text();
    if (!answer.ok) {
      const text = data && data.issue ? data.issue.map((i) => i.diagnostics).join("; ") : String(data);
      const hint = answer.status === 401 ? " (Sign in, top right, or give a token under Access token)" : "";
      throw new Error(answer.status + ": " + text + hint);
    }
    return data;
  }

  // -- Convert ------------------------------------------------------------------------------------
  $("convert-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    statusLine.textContent = "Converting…";
    try {
      const result = await post("/sandbox/convert", $("message").value);
      showResult(result);
      const codes = result.messages.map((m) => m.code).join(", ");
      statusLine.textContent = `Converted ${result.messages.length} message(s): ${codes}.`;
    } catch (error) {
      statusLine.textContent = "The sandbox refused the call: " + error.message;
    }
  });

  // A location such as "PV1-19.1" → segment PV1, field 19; "MSH" → the whole segment.
  function parseLocation(location) {
    const match = /^([A-Z0-9]{3})(?:-(\d+))?/.exec(location || "");
    return match ? { segment: match[1], field: match[2] ? Number(match[2]) : null } : null;
  }

  function messageView(text, issues) {
    const pre = el("pre", { class: "hl7", "aria-label": "The message, with the fields the ACK points at marked" });
    const marks = issues
      .map((issue, index) => ({ at: parseLocation(issue.location), n: index + 1 }))
      .filter((m) => m.at);
    for (const line of text.split("\n")) {
      const fields = line.split("|");
      const name = fields[0];
      const segmentMarks = marks.filter((m) => m.at.segment === name);
      const row = el("span", { class: "seg" });
      fields.forEach((value, index) => {
        // MSH-1 is the separator itself: the text after "MSH|" starts at MSH-2.
        const number = name === "MSH" ? index + 1 : index;
        if (index > 0) row.append("|");
        const hits = segmentMarks.filter((m) => m.at.field === number || (m.at.field === null && index === 0));
        if (hits.length) {
          const label = hits.map((h) => "[" + h.n + "]").join("");
          row.append(el("mark", { title: name + "-" + number }, value || "\u00a0"), el("sup", { text: label }));
        } else {
          row.append(value);
        }
      });
      pre.append(row, "\n");
    }
    return pre;
  }

  function messageCard(m) {
    const card = el("article", { class: "msg panel" });
    card.append(el("h3", {}, `Message ${m.number}: ACK `, ack(m.code), meaning(m.code)));
    if (m.issues.length) {
      const list = el("ol", { class: "issues", "aria-label": "ERR lines" });
      for (const issue of m.issues) {
        const severity = issue.severity === "W" ? "warning" : "error";
        list.append(el("li", { class: severity }, el("strong", { text: severity + " " + (issue.location || "") }),
          ` (code ${issue.code}): ${issue.text}`));
      }
      card.append(list);
    } else {
      card.append(el("p", { text: "No ERR line." }));
    }
    card.append(messageView(m.message, m.issues));
    if (m.changed.length) {
      const changed = el("ul", { class: "changed", "aria-label": "Resources this message changed" });
      for (const c of m.changed) changed.append(el("li", {}, el("code", { text: c.reference }), ` v${c.version}: ${c.summary}`));
      card.append(el("p", { text: "Changed:" }), changed);
    }
    card.append(details("ACK as sent", m.ack));
    return card;
  }

  function table(caption, headers, rows) {
    const t = el("table", { class: "grid" }, el("caption", { text: caption }));
    t.append(el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h })))));
    const body = el("tbody");
    for (const row of rows) body.append(el("tr", {}, ...row.map((cell) => el("td", {}, cell ?? ""))));
    t.append(body);
    return t;
  }

  function showResult(result) {
    const out = $("results");
    out.replaceChildren();
    out.hidden = false;
    out.append(el("h2", { text: "ACKs" }));
    for (const m of result.messages) out.append(messageCard(m));
    if (result.skipped) out.append(el("p", { class: "notice", text: `${result.skipped} message(s) not run: the call's CPU budget ran out.` }));

    out.append(el("h2", { text: "Stay timeline" }));
    if (!result.timeline.length) out.append(el("p", { text: "No stay." }));
    for (const stay of result.timeline) {
      out.append(table(`${stay.stay}: ${stay.summary}`, ["Start", "End", "Movement", "Status", "Location", "Unit"],
        stay.movements.map((mv) => [mv.start, mv.end, mv.kind, mv.status, mv.location, mv.unit])));
    }

    out.append(el("h2", { text: "Care circle, as it evolves" }));
    if (!result.care_circle.length) out.append(el("p", { text: "No care circle." }));
    for (const snapshot of result.care_circle) {
      out.append(table(`After message ${snapshot.after_message}`, ["Member", "Role", "From", "Until"],
        snapshot.members.map((p) => [p.member, p.role, p.start, p.end || "(current)"])));
    }

    const resources = result.bundle.entry.map((e) => e.resource);
    out.append(el("h2", { text: `Resources (${resources.length})` }));
    resources.forEach((resource, i) => {
      const summary = result.summaries[i];
      out.append(details(`${summary.reference} — ${summary.summary}`, JSON.stringify(resource, null, 2)));
    });

    out.append(el("h2", { text: "Validation" }));
    out.append(el("p", { class: "help", text: "Each resource: the FHIR R4 structure, the profiles it claims, and for NdE CommunicationRequests the NdE rules the gateway enforces. FR Core and CDS profile conformance is proven by the gateway's test suite, not re-run here." }));
    const findings = el("ul", { class: "validation" });
    for (const v of result.validation) {
      const profiles = v.profiles.length ? " — claims " + v.profiles.join(", ") : "";
      const verdict = v.valid ? "valid FHIR R4 structure" : `${v.findings.length} finding(s)`;
      const item = el("li", {}, el("code", { text: v.reference }), `: ${verdict}${profiles}`);
      if (v.findings.length) {
        item.append(el("ul", {}, ...v.findings.map((f) => el("li", { text: `${f.severity} ${f.location}: ${f.text}` }))));
      }
      findings.append(item);
    }
    out.append(findings);

    out.append(el("h2", { text: `Notifications a subscriber would receive (${result.notifications.length})` }));
    if (!result.notifications.length) out.append(el("p", { text: "None." }));
    for (const bundle of result.notifications) {
      const status = bundle.entry[0].resource.parameter;
      const topic = (status.find((p) => p.name === "topic") || {}).valueCanonical || "";
      const event = status.find((p) => p.name === "notification-event");
      const focus = event ? (event.part.find((p) => p.name === "focus") || {}).valueReference : null;
      out.append(details(`${topic.split("/").pop()} — ${focus ? focus.reference.split("/").slice(-2).join("/") : ""}`,
        JSON.stringify(bundle, null, 2)));
    }
    out.append(el("h2", { text: `NdE notification orders a platform would receive (${result.nde_orders.length})` }));
    out.append(el("p", { class: "help", text: "ANS NdE subscribers get a flux 4 CommunicationRequest (NdE_NotificationRequestNdE) per event declaration, in place of the Backport Bundle." }));
    if (!result.nde_orders.length) out.append(el("p", { text: "None." }));
    for (const order of result.nde_orders) {
      const concept = ((order.extension || []).find((e) => e.url.endsWith("/event-type")) || {}).valueCodeableConcept || {};
      const type = (concept.coding || [])[0] || {};
      out.append(details(`${type.code || "?"} ${type.display || ""} — CommunicationRequest/${order.id} (${order.status})`,
        JSON.stringify(order, null, 2)));
    }
    // Keyboard and screen-reader users land on the results, not back at the top of the form.
    const first = out.querySelector("h2");
    first.tabIndex = -1;
    first.focus({ preventScroll: true });
  }

  // -- sandbox tenants: what sandbox senders sent, from the isolated store ------------------------
  async function loadTenants() {
    const section = $("tenants");
    if (!section) return;
    const note = $("tenants-status");
    const answer = await fetch("/sandbox/store/messages", { headers: withToken({}) });
    if (!answer.ok) {
      note.textContent = answer.status === 401 ? "These need a token or a session: Sign in (top right), or give a token under Access token, above." : "Could not read the sandbox store.";
      return;
    }
    const data = await answer.json();
    note.textContent = `Sandbox senders: ${data.senders.join(", ") || "none registered"}; ${data.messages.length} message(s).`;
    const body = section.querySelector("tbody");
    body.replaceChildren();
    for (const m of data.messages) {
      const open = el("button", { type: "button", text: "Open", "aria-label": `Open sandbox message ${m.id}` });
      open.addEventListener("click", async () => {
        const detail = await (await fetch(`/sandbox/store/messages/${m.id}`, { headers: withToken({}) })).json();
        $("message").value = detail.raw.replace(/\r\n?/g, "\n");
        $("convert-form").requestSubmit();
      });
      body.append(el("tr", {}, el("td", { text: m.received_at.slice(0, 19).replace("T", " ") }), el("td", {}, ack(m.outcome)),
        el("td", { text: m.type }), el("td", { text: m.sender }), el("td", { text: m.control_id }),
        el("td", { text: m.transport }), el("td", {}, open)));
    }
  }
  loadTenants();
  $("token").addEventListener("change", loadTenants);

  // -- a file: the conformance report -----------------------------------------------------------
  let lastFile = null;

  $("report-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("file").files[0];
    if (!file) return;
    lastFile = await file.arrayBuffer();
    statusLine.textContent = "Checking the file…";
    try {
      const report = await post("/sandbox/report", lastFile);
      showReport(report, file.name);
      statusLine.textContent = `Report ready: ${report.messages} message(s).`;
    } catch (error) {
      statusLine.textContent = "The sandbox refused the file: " + error.message;
    }
  });

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el("a", { href: url, download: name, text: "" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function showReport(report, name) {
    const out = $("report");
    out.replaceChildren();
    out.hidden = false;
    const heading = el("h2", { text: `Conformance report: ${name}`, tabindex: "-1" });
    out.append(heading);
    const outcomes = ["AA", "AE", "AR"].map((c) => `${c} ${report.outcomes[c] || 0}`).join(" · ");
    out.append(el("p", { class: "counts", text: `${report.messages} message(s): ${outcomes}` +
      (report.skipped ? ` (${report.skipped} not run: CPU budget spent)` : "") }));
    const buttons = el("p", { class: "actions" });
    const asJson = el("button", { type: "button", text: "Download JSON" });
    asJson.addEventListener("click", () => download("sandbox-report.json", "application/json", JSON.stringify(report, null, 2)));
    const asCsv = el("button", { type: "button", text: "Download CSV" });
    asCsv.addEventListener("click", async () => {
      const answer = await fetch("/sandbox/report?format=csv", { method: "POST", headers: withToken({ "Content-Type": "text/plain" }), body: lastFile });
      download("sandbox-report.csv", "text/csv", await answer.text());
    });
    buttons.append(asJson, " ", asCsv);
    out.append(buttons);
    out.append(table("Counts by trigger and outcome", ["Trigger", "AA", "AE", "AR"],
      report.by_trigger.map((r) => [r.trigger, String(r.AA), String(r.AE), String(r.AR)])));
    out.append(table("Warnings and errors by kind", ["Count", "Severity", "Where", "Kind"],
      report.issues_by_kind.map((k) => [String(k.count), k.severity === "W" ? "warning" : "error", k.location, k.kind])));
    out.append(table("Worst messages first", ["#", "Control id", "Trigger", "Outcome", "Errors", "Warnings", "First issue"],
      report.worst.map((r) => [String(r.number), r.control_id, r.trigger, ack(r.outcome), String(r.errors), String(r.warnings), r.first_issue])));
    heading.focus({ preventScroll: true });
  }
})();
