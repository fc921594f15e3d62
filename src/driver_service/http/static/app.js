// The fleet map: markers by status moving live (one SSE stream of the map's area), a
// driver's details, last-hour trail and trips, zones, the event feed, search by id.
// Streams are read with fetch() and an Authorization header (EventSource cannot send one,
// and a token never goes into a URL); the token lives in sessionStorage only.
"use strict";
(function () {
  const TOKEN_KEY = "driver-service-token";
  const COLORS = { AVAILABLE: "#1a9850", BUSY: "#f46d43", OFFLINE: "#888888" };
  const MAX_RADIUS_M = 100000;
  const state = { markers: new Map(), selected: null, trail: null, zones: null, selectedStream: null, fleetStream: null };
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

  function markerFor(d) {
    let marker = state.markers.get(d.driverId);
    const color = COLORS[d.status] || "#333";
    if (!marker) {
      marker = L.circleMarker([d.latitude, d.longitude], { radius: 8, weight: 2, color: "#fff", fillColor: color, fillOpacity: 0.9, className: "driver-marker" });
      marker.addTo(map);
      marker.on("click", () => select(d.driverId));
      marker.bindTooltip(d.driverId);
      state.markers.set(d.driverId, marker);
    } else {
      marker.setLatLng([d.latitude, d.longitude]);
      marker.setStyle({ fillColor: color });
    }
    const el = marker.getElement();
    if (el) {
      el.setAttribute("data-driver-id", d.driverId);
      el.setAttribute("data-status", d.status);
      el.setAttribute("data-lat", String(d.latitude));
      el.setAttribute("data-lon", String(d.longitude));
    }
    return marker;
  }

  function followFleet() {
    if (state.fleetStream) state.fleetStream.stop();
    const center = map.getCenter();
    const corner = map.getBounds().getNorthEast();
    const radius = Math.min(MAX_RADIUS_M, Math.max(100, center.distanceTo(corner)));
    const q = new URLSearchParams({ latitude: center.lat, longitude: center.lng, radius_m: radius, limit: 1000 });
    for (const s of ["AVAILABLE", "BUSY"]) q.append("statuses", s);
    state.fleetStream = sse("/v1/fleet:stream?" + q, (event, body) => {
      if (event !== "drivers") return;
      const seen = new Set();
      for (const d of body.drivers || []) { markerFor(d); seen.add(d.driverId); }
      for (const [id, marker] of state.markers) {
        if (!seen.has(id) && id !== state.selected) { marker.remove(); state.markers.delete(id); }
      }
      setStatus((body.drivers || []).length + " drivers in view · live");
    });
  }
  map.on("moveend", followFleet);

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
      markerFor(d);
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
      if (marker) markerFor({ driverId: loc.driverId, latitude: loc.latitude, longitude: loc.longitude, status: marker.getElement() ? marker.getElement().getAttribute("data-status") : "AVAILABLE" });
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
