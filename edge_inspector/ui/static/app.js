// edge-inspector operator page: plain script, no build step, nothing from the internet.
// State arrives once from /ui/api/state, then as server-sent events from /ui/events.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { latest: null, gallery: [], strip: [], stats: null, actions: { enabled: false, reason: "" } };
  const GALLERY_MAX = 48;

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d === undefined ? 3 : d));

  function feedbackButtons(card) {
    const box = el("div", { class: "actions" });
    if (card.feedback) {
      box.appendChild(el("span", { class: "judged" }, "judged: " + card.feedback));
      return box;
    }
    for (const [label, text] of [["good", "good — false alarm"], ["defect", "defect — missed"]]) {
      const b = el("button", { type: "button", "data-card": String(card.id), "data-label": label, class: "fb-" + label }, text);
      b.disabled = !state.actions.enabled;
      b.title = state.actions.reason || "";
      b.addEventListener("click", () => sendFeedback(card, label, b));
      box.appendChild(b);
    }
    return box;
  }

  async function sendFeedback(card, label, button) {
    const msg = $("feedback-msg");
    const who = $("who").value.trim();
    const token = $("token").value;
    sessionStorage.setItem("ei-who", who);
    sessionStorage.setItem("ei-token", token);
    if (!who) { msg.className = "error"; msg.textContent = "enter your name first"; return; }
    button.disabled = true;
    try {
      const why = $("why").value.trim() || (label === "good" ? "false alarm" : "missed defect");
      const r = await fetch("/ui/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
        body: JSON.stringify({ card: card.id, label: label, who: who, why: why }),
      });
      const body = await r.json().catch(() => ({ message: "HTTP " + r.status }));
      msg.className = r.ok ? "" : "error";
      msg.textContent = body.message || ("HTTP " + r.status);
      if (r.ok) { card.feedback = label; $("why").value = ""; renderLatest(); renderGallery(); }
    } catch (e) {
      msg.className = "error"; msg.textContent = "feedback not sent: " + e;
    } finally {
      button.disabled = !state.actions.enabled;
    }
  }

  function renderLatest() {
    const c = state.latest;
    if (!c) return;
    const v = $("verdict");
    v.textContent = c.verdict; v.className = "verdict " + c.verdict;
    v.setAttribute("data-card", String(c.id));
    $("score").textContent = fmt(c.score);
    $("threshold").textContent = fmt(c.threshold);
    $("latest-part").textContent = (c.part_id ? "part " + c.part_id + " · " : "") + "frame " + c.frame_id + (c.seq ? " · seq " + c.seq : "");
    const url = $("show-heatmap").checked && c.overlay_url ? c.overlay_url : c.frame_url;
    if (url) $("latest-img").src = url;
    const d = $("latest-defects");
    d.textContent = c.error ? c.error : (c.defects.length ? c.defects.length + " defect(s): " +
      c.defects.map((x) => "[" + x.bbox.join(", ") + "] " + fmt(x.score, 2)).join("; ") : "no defects");
    const a = $("latest-actions");
    a.replaceChildren(feedbackButtons(c));
  }

  function renderGallery() {
    const g = $("gallery");
    g.replaceChildren(...state.gallery.map((c) => {
      const card = el("div", { class: "card", "data-card": String(c.id) });
      const img = el("img", { alt: "NG part " + c.frame_id, src: c.overlay_url || c.frame_url || "" });
      card.appendChild(img);
      card.appendChild(el("div", {}, (c.part_id ? "part " + c.part_id + " · " : "") + "score " + fmt(c.score) +
        " · " + new Date(c.ts * 1000).toLocaleTimeString()));
      card.appendChild(feedbackButtons(c));
      return card;
    }));
  }

  function renderStats() {
    const s = state.stats;
    if (!s) return;
    $("station").textContent = s.station;
    $("count-ok").textContent = s.counts.OK || 0;
    $("count-ng").textContent = s.counts.NG || 0;
    $("count-error").textContent = s.counts.ERROR || 0;
    $("yield").textContent = s.yield === null ? "–" : (100 * s.yield).toFixed(1) + " %";
    $("since").textContent = new Date(s.since * 1000).toLocaleTimeString();
    $("model").textContent = s.model ? s.model.name : "–";
    const d = s.drift || { status: "off" };
    const badge = $("drift");
    badge.className = "badge " + (d.status === "alert" ? "alert" : d.status === "ok" ? "ok" : "off");
    badge.setAttribute("data-status", d.status);
    badge.textContent = d.psi ? "drift " + d.status + " · PSI " + fmt(d.psi[d.worst], 2) + " (" + d.worst + ", alert ≥ " +
      d.alert_threshold + ")" : "drift " + d.status;
    badge.title = d.reason || "population stability index of the last " + d.samples + " frames vs. calibration";
  }

  function renderStrip() {
    const cv = $("strip"), ctx = cv.getContext("2d");
    const w = cv.width, h = cv.height, pts = state.strip;
    ctx.clearRect(0, 0, w, h);
    const thr = state.stats && state.stats.threshold;
    if (!pts.length) return;
    let hi = Math.max(thr || 0, ...pts.map((p) => p[1])) * 1.1 || 1;
    let lo = Math.min(0, ...pts.map((p) => p[1]));
    const y = (v) => h - 4 - (v - lo) / (hi - lo) * (h - 8);
    const x = (i) => pts.length === 1 ? w / 2 : 4 + i / (pts.length - 1) * (w - 8);
    if (thr) {
      ctx.strokeStyle = "#ff5252"; ctx.setLineDash([6, 4]); ctx.beginPath();
      ctx.moveTo(0, y(thr)); ctx.lineTo(w, y(thr)); ctx.stroke(); ctx.setLineDash([]);
    }
    ctx.strokeStyle = "#4fc3f7"; ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[1])) : ctx.moveTo(x(i), y(p[1]))));
    ctx.stroke();
    pts.forEach((p, i) => {
      ctx.fillStyle = p[2] === "NG" ? "#ff5252" : "#81c784";
      ctx.fillRect(x(i) - 2, y(p[1]) - 2, 4, 4);
    });
  }

  function renderActions() {
    $("actions-note").textContent = state.actions.reason || "";
  }

  function onPart(data) {
    const c = data.card;
    state.stats = data.stats;
    state.latest = c;
    if (c.score !== null) {
      state.strip.push([c.ts, c.score, c.verdict]);
      if (state.strip.length > 300) state.strip.shift();
    }
    if (c.verdict === "NG") {
      state.gallery.unshift(c);
      if (state.gallery.length > GALLERY_MAX) state.gallery.pop();
      renderGallery();
    }
    renderLatest(); renderStats(); renderStrip();
  }

  function connect() {
    const es = new EventSource("/ui/events");
    es.addEventListener("hello", (e) => { $("link").textContent = "live"; $("link").className = "badge ok"; state.stats = JSON.parse(e.data); renderStats(); });
    es.addEventListener("part", (e) => onPart(JSON.parse(e.data)));
    es.onerror = () => { $("link").textContent = "reconnecting"; $("link").className = "badge alert"; };
  }

  async function load() {
    $("who").value = sessionStorage.getItem("ei-who") || "";
    $("token").value = sessionStorage.getItem("ei-token") || "";
    $("show-heatmap").addEventListener("change", renderLatest);
    try {
      const r = await fetch("/ui/api/state");
      const s = await r.json();
      Object.assign(state, { latest: s.latest, gallery: s.gallery, strip: s.strip, stats: s.stats, actions: s.actions });
      renderActions(); renderStats(); renderLatest(); renderGallery(); renderStrip();
    } catch (e) {
      $("feedback-msg").textContent = "station not reachable: " + e;
    }
    connect();
  }
  document.addEventListener("DOMContentLoaded", load);
})();
