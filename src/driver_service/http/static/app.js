// The fleet map: every driver as a marker by status (OFFLINE grey, stale faded), moving live
// (GET /v1/drivers pages, then one SSE stream of the whole fleet's changes), a driver's
// details, last-hour trail and trips, zones, the event feed, search by id.
// Streams are read with fetch() and an Authorization header (EventSource cannot send one,
// and a token never goes into a URL); the token lives in sessionStorage only.
"use strict";
(function () {
  const TOKEN_KEY = "driver-service-token";
  const COLORS = { AVAILABLE: "#1a9850", BUSY: "#f46d43", OFFLINE: "#888888" };
  const PAGE_SIZE = 1000;
  // drivers: id -> {driverId, status, stale, located, latitude, longitude, locT (its fix, ms)}
  const state = { markers: new Map(), drivers: new Map(), selected: null, trail: null, zones: null, selectedStream: null, fleetStream: null };
  const $ = (id) => document.getElementById(id);

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
  function askToken() {
    const dialog = $("token-dialog");
    if (!dialog.open) dialog.showModal();
  }
  $("token-form").addEventListener("submit", () => {
    const value = $("token-input").value.trim();
    if (value) { sessionStorage.setItem(TOKEN_KEY, value); $("token-input").value = ""; restart(); }
  });
  $("sign-out").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); askToken(); });

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (token()) h.Authorization = "Bearer " + token();
    return h;
  }
  async function api(path) {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) askToken();
    if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
    return body;
  }
  function setStatus(text) { $("status-line").textContent = text; }

  // One SSE stream over fetch: parses `id:`, `event:`, `data:` and comment lines;
  // reconnects with Last-Event-ID after a broken link, stops when aborted or told `end`.
  function sse(path, onEvent, options) {
    const controller = new AbortController();
    let lastId = (options && options.lastEventId) || null;
    let stopped = false;
    async function run() {
      while (!stopped) {
        try {
          const h = headers({ Accept: "text/event-stream" });
          if (lastId !== null) h["Last-Event-ID"] = lastId;
          const response = await fetch(path, { headers: h, signal: controller.signal, cache: "no-store" });
          if (response.status === 401) { askToken(); return; }
          if (response.status === 403) { // retrying cannot help: the token lacks a scope
            const body = await response.json().catch(() => ({}));
            setStatus((body.error && body.error.message) || "forbidden: " + path);
            return;
          }
          if (!response.ok) throw new Error("HTTP " + response.status);
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              let event = "message", data = "", id = null;
              for (const line of block.split("\n")) {
                if (line.startsWith("id: ")) id = line.slice(4);
                else if (line.startsWith("event: ")) event = line.slice(7);
                else if (line.startsWith("data: ")) data += line.slice(6);
              }
              if (id !== null) lastId = id;
              if (data) onEvent(event, JSON.parse(data));
            }
          }
        } catch (error) {
          if (stopped) return;
          setStatus("stream interrupted: " + error.message);
        }
        if (!stopped) await new Promise((r) => setTimeout(r, 1000));
      }
    }
    run();
    return { stop() { stopped = true; controller.abort(); } };
  }

  // --- the map ------------------------------------------------------------------------------
  const start = (location.hash.slice(1) || "52.52,13.405,12").split(",").map(Number);
  const map = L.map("map", { preferCanvas: false }).setView([start[0], start[1]], start[2] || 12);

  const Grid = L.GridLayer.extend({
    createTile(coords) {
      const tile = document.createElement("canvas");
      const size = this.getTileSize();
      tile.width = size.x; tile.height = size.y;
      const ctx = tile.getContext("2d");
      ctx.strokeStyle = "#c8ccd4"; ctx.strokeRect(0, 0, size.x, size.y);
      const nw = map.unproject(coords.scaleBy(size), coords.z);
      ctx.fillStyle = "#667"; ctx.font = "10px monospace";
      ctx.fillText(nw.lat.toFixed(4) + ", " + nw.lng.toFixed(4), 4, 12);
      return tile;
    },
  });
  fetch("/config.json").then((r) => r.json()).then((config) => {
    if (config.mapTiles) L.tileLayer(config.mapTiles, { maxZoom: 19 }).addTo(map);
    else new Grid().addTo(map);
  });

  const legend = L.control({ position: "bottomleft" });
  legend.onAdd = () => {
    const box = L.DomUtil.create("div", "legend");
    for (const [label, cls] of [["available", "available"], ["busy", "busy"], ["offline", "offline"], ["stale (no update lately)", "stale"]]) {
      const row = L.DomUtil.create("div", "", box);
      L.DomUtil.create("span", "swatch " + cls, row);
      row.append(label);
    }
    return box;
  };
  legend.addTo(map);

  // A driver's marker from what is known of it (a driver never located has none).
  function markerFor(d) {
    if (!d.located) return null;
    let marker = state.markers.get(d.driverId);
    const color = COLORS[d.status] || "#333";
    const look = d.stale ? { fillColor: color, fillOpacity: 0.35, dashArray: "3 3", color: "#333" }
      : { fillColor: color, fillOpacity: 0.9, dashArray: null, color: "#fff" };
    if (!marker) {
      marker = L.circleMarker([d.latitude, d.longitude], Object.assign({ radius: 8, weight: 2, className: "driver-marker" }, look));
      marker.addTo(map);
      marker.on("click", () => select(d.driverId));
      marker.bindTooltip(d.driverId);
      state.markers.set(d.driverId, marker);
    } else {
      marker.setLatLng([d.latitude, d.longitude]);
      marker.setStyle(look);
    }
    const el = marker.getElement();
    if (el) {
      el.setAttribute("data-driver-id", d.driverId);
      el.setAttribute("data-status", d.status);
      el.setAttribute("data-stale", d.stale ? "1" : "0");
      el.setAttribute("data-color", color);
      el.setAttribute("data-lat", String(d.latitude));
      el.setAttribute("data-lon", String(d.longitude));
    }
    return marker;
  }

  // What the map knows of a driver, changed by `change`; the marker follows.
  function update(driverId, change) {
    const d = state.drivers.get(driverId) || { driverId, status: "AVAILABLE", stale: false, located: false, locT: 0 };
    Object.assign(d, change);
    state.drivers.set(driverId, d);
    markerFor(d);
  }
  function applyLocation(loc) {
    const t = Date.parse(loc.timestamp) || 0;
    const known = state.drivers.get(loc.driverId);
    if (known && t < known.locT) return; // older than what the listing or a frame gave
    update(loc.driverId, { latitude: loc.latitude, longitude: loc.longitude, locT: t, located: true, stale: false });
  }
  function applyEvent(e) {
    if (e.type === "driver.status_changed") update(e.driverId, { status: e.newStatus });
    else if (e.type === "driver.offline") update(e.driverId, { stale: true });
    else if (e.type === "driver.online") {
      const change = { stale: false };
      if (e.newStatus) change.status = e.newStatus;
      const t = Date.parse(e.time) || 0;
      const known = state.drivers.get(e.driverId);
      if (e.location && (!known || t >= known.locT)) Object.assign(change, { latitude: e.location.latitude, longitude: e.location.longitude, locT: t, located: true });
      update(e.driverId, change);
    }
  }
  function countLine() {
    let offline = 0, stale = 0;
    for (const d of state.drivers.values()) { if (d.status === "OFFLINE") offline++; if (d.stale) stale++; }
    setStatus(state.drivers.size + " drivers (" + offline + " offline, " + stale + " stale) · live");
  }

  // The whole fleet: the stream first (its `ready` says it is subscribed), then every page
  // of GET /v1/drivers; changes that came meanwhile are applied after the listing, in order
  // (locations only when newer than the listed one), so nothing falls between the two.
  function followFleet() {
    if (state.fleetStream) state.fleetStream.stop();
    let pending = null; // changes held back while the listing is read
    let generation = 0; // a reconnect lists again; an older listing still running gives way
    async function list() {
      const mine = ++generation;
      pending = pending || [];
      const listed = new Map();
      let token = "";
      let complete = false;
      try {
        do {
          const q = new URLSearchParams({ page_size: PAGE_SIZE });
          if (token) q.set("page_token", token);
          const page = await api("/v1/drivers?" + q);
          if (mine !== generation) return;
          for (const d of page.drivers || []) listed.set(d.driverId, d);
          token = page.nextPageToken || "";
        } while (token);
        complete = true;
      } catch (error) { setStatus("fleet: " + error.message); }
      if (mine !== generation) return;
      if (complete) { // a driver gone from the store (erased) goes from the map too
        for (const [id, marker] of state.markers) {
          if (!listed.has(id)) { marker.remove(); state.markers.delete(id); state.drivers.delete(id); }
        }
      }
      for (const d of listed.values()) {
        const t = d.locatedAt ? Date.parse(d.locatedAt) : 0;
        update(d.driverId, { status: d.status, stale: !!d.stale, located: !!d.locatedAt, latitude: d.latitude, longitude: d.longitude, locT: t });
      }
      const held = pending || [];
      pending = null;
      for (const [kind, body] of held) apply(kind, body);
      countLine();
    }
    function apply(kind, body) {
      if (kind === "locations") for (const loc of body.locations || []) applyLocation(loc);
      else if (kind === "event") applyEvent(body);
    }
    state.fleetStream = sse("/v1/fleet:stream", (event, body) => {
      if (event === "ready") { list(); return; }
      if (pending) { pending.push([event, body]); return; }
      apply(event, body);
      countLine();
    });
  }

  // --- one driver ---------------------------------------------------------------------------
  function field(dl, name, value) {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd"); dd.textContent = value;
    dl.append(dt, dd);
  }
  async function select(driverId) {
    state.selected = driverId;
    if (state.selectedStream) state.selectedStream.stop();
    const box = $("driver-details");
    box.textContent = "loading…";
    try {
      const d = await api("/v1/drivers/" + encodeURIComponent(driverId));
      const dl = document.createElement("dl");
      dl.id = "driver-fields";
      dl.setAttribute("data-driver-id", d.driverId);
      field(dl, "id", d.driverId); field(dl, "status", d.status);
      field(dl, "position", d.latitude.toFixed(5) + ", " + d.longitude.toFixed(5));
      field(dl, "last seen", d.lastSeenAt || "-");
      box.replaceChildren(dl);
    } catch (error) { box.textContent = error.message; return; }
    const until = new Date();
    const since = new Date(until.getTime() - 3600 * 1000);
    const range = "since=" + since.toISOString() + "&until=" + until.toISOString();
    try {
      const trail = await api("/v1/drivers/" + encodeURIComponent(driverId) + "/trail?" + range);
      if (state.trail) state.trail.remove();
      const points = (trail.points || []).map((p) => [p.latitude, p.longitude]);
      state.trail = L.polyline(points, { color: "#2c7fb8", weight: 3, className: "trail-line" }).addTo(map);
      const el = state.trail.getElement();
      if (el) { el.setAttribute("data-driver-id", driverId); el.setAttribute("data-points", String(points.length)); }
    } catch (error) { setStatus("trail: " + error.message); }
    try {
      const trips = await api("/v1/drivers/" + encodeURIComponent(driverId) + "/trips?" + range);
      const list = $("trips");
      list.replaceChildren(...(trips.trips || []).map((t) => {
        const li = document.createElement("li");
        li.textContent = t.startTime.slice(11, 19) + "–" + t.endTime.slice(11, 19) + " · " + (t.distanceM / 1000).toFixed(2) + " km";
        return li;
      }));
      if (!list.children.length) list.textContent = "no trips";
    } catch (error) { $("trips").textContent = error.message; }
    state.selectedStream = sse("/v1/drivers/" + encodeURIComponent(driverId) + "/locations:stream", (event, loc) => {
      if (event !== "location") return;
      const marker = state.markers.get(loc.driverId);
      if (marker) applyLocation(loc);
      if (state.trail) state.trail.addLatLng([loc.latitude, loc.longitude]);
    });
  }
  $("search").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("search-id").value.trim();
    if (!id) return;
    try {
      const d = await api("/v1/drivers/" + encodeURIComponent(id));
      map.setView([d.latitude, d.longitude], Math.max(map.getZoom(), 14));
      select(d.driverId);
    } catch (error) { setStatus(id + ": " + error.message); }
  });

  // --- zones and events ---------------------------------------------------------------------
  async function loadZones() {
    try {
      const body = await api("/v1/zones?page_size=1000");
      if (state.zones) state.zones.remove();
      state.zones = L.layerGroup().addTo(map);
      const list = $("zones");
      list.replaceChildren();
      for (const z of body.zones || []) {
        const style = { color: "#7b3294", weight: 2, fillOpacity: 0.08, className: "zone-shape" };
        const layer = z.circle
          ? L.circle([z.circle.latitude, z.circle.longitude], Object.assign({ radius: z.circle.radiusM }, style))
          : L.geoJSON(JSON.parse(z.geojson), { style: () => style });
        layer.bindTooltip(z.name || z.id);
        layer.addTo(state.zones);
        const li = document.createElement("li");
        li.textContent = (z.name || z.id) + " (" + z.id + ")";
        list.append(li);
      }
      map.eachLayer((layer) => {
        if (layer.options && layer.options.className === "zone-shape" && layer.getElement && layer.getElement()) {
          layer.getElement().setAttribute("data-zone", "1");
        }
      });
    } catch (error) { $("zones").textContent = error.message; }
  }
  let eventStream = null;
  function followEvents() {
    if (eventStream) eventStream.stop();
    eventStream = sse("/v1/events:stream", (event, e) => {
      if (event !== "event") return;
      const li = document.createElement("li");
      li.textContent = "#" + e.id + " " + e.type + " " + e.driverId + (e.zoneId ? " " + e.zoneId : "");
      const list = $("events");
      list.prepend(li);
      while (list.children.length > 100) list.lastChild.remove();
      if (e.type.startsWith("zone.") && e.zoneDeleted) loadZones();
    });
  }

  function restart() {
    followFleet();
    loadZones();
    followEvents();
  }
  setInterval(loadZones, 10000);
  window.fleetMap = { map, state, select, loadZones };
  restart();
})();
