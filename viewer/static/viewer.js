/* gitract-seg viewer: three planes (axial, coronal, sagittal) with linked crosshairs and a 3D view of the class
 * surfaces, drawn by NiiVue (vendored at install time, see viewer/vendor.py). Served by viewer/app.py, or opened
 * from disk as a static report (viewer/export.py sets window.REPORT). No network beyond the server that sent it. */
(function () {
  "use strict";
  const NV = window.niivue;
  const REPORT = window.REPORT || null;
  const PLANES = ["axial", "coronal", "sagittal"];
  const RAS_AXIS = { sagittal: 0, coronal: 1, axial: 2 };
  const state = {
    study: null, key: null, meta: null, mode: "pred", buffers: {}, visible: [], opacity: [], boxes: true,
    planes: {}, render: null, meshes: [], syncing: false, loadId: 0,
  };
  window.viewer = state; // for tests and the console

  const $ = (id) => document.getElementById(id);
  const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
  const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;

  function showError(err) {
    const box = $("error");
    box.textContent = String(err && err.message ? err.message : err);
    box.hidden = false;
    document.body.dataset.state = "error";
    console.error(err);
  }

  // ------------------------------------------------------------------ data: the server's API or the static report
  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.detail || body.error || `${url}: HTTP ${r.status}`);
    return body;
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error(`cannot load ${src}`));
      document.head.appendChild(s);
    });
  }

  function fromBase64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  const api = {
    study: () => (REPORT ? Promise.resolve(REPORT.study) : getJSON("api/study")),
    async caseMeta(key) {
      if (!REPORT) return getJSON(`api/case/${encodeURIComponent(key)}`);
      const entry = REPORT.cases[key];
      if (!entry) throw new Error(`case ${key} is not in this report`);
      if (!(window.REPORT_FILES && window.REPORT_FILES[key])) await loadScript(entry.script);
      return entry.meta;
    },
    async file(key, name) {
      if (REPORT) return fromBase64(window.REPORT_FILES[key][name]);
      const r = await fetch(`api/case/${encodeURIComponent(key)}/file/${encodeURIComponent(name)}`);
      if (!r.ok) throw new Error(`${key}/${name}: HTTP ${r.status}`);
      return r.arrayBuffer();
    },
    curves: () => (REPORT ? Promise.resolve(REPORT.curves || []) : getJSON("api/curves")),
  };

  async function buffer(name) {
    const k = `${state.key}/${name}`;
    if (!state.buffers[k]) state.buffers[k] = await api.file(state.key, name);
    return state.buffers[k];
  }

  // ------------------------------------------------------------------ NiiVue instances
  async function makeViewers() {
    const common = {
      backColor: [0, 0, 0, 1], crosshairColor: [1, 0.85, 0.2, 1], show3Dcrosshair: false, dragAndDropEnabled: false,
      isColorbar: false, isRadiologicalConvention: true, logLevel: "error",
    };
    for (const p of PLANES) {
      const nv = new NV.Niivue({ ...common });
      await nv.attachTo(p);
      nv.setSliceType({ axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal }[p]);
      nv.onLocationChange = () => syncFrom(p);
      state.planes[p] = nv;
    }
    const r = new NV.Niivue({ ...common, backColor: [0.09, 0.1, 0.12, 1], isOrientCube: true });
    await r.attachTo("render");
    r.setSliceType(r.sliceTypeRender);
    state.render = r;
  }

  function addColormaps(nv, colours) {
    colours.forEach((c, i) => nv.addColormap(`class${i}`, { R: [0, c[0]], G: [0, c[1]], B: [0, c[2]], A: [0, 255], I: [0, 255] }));
  }

  const DIFF_LUT = (dc) => ({
    R: [0, dc.tp[0], dc.fp[0], dc.fn[0]], G: [0, dc.tp[1], dc.fp[1], dc.fn[1]], B: [0, dc.tp[2], dc.fp[2], dc.fn[2]],
    A: [0, 255, 255, 255], I: [0, 1, 2, 3], labels: ["", "TP", "FP", "FN"],
  });

  async function volume(name, opts) {
    const buf = (await buffer(name)).slice(0);
    const v = await NV.NVImage.loadFromUrl({ url: name, name, buffer: buf, ...opts });
    if (opts.lut) v.setColormapLabel(opts.lut);
    return v;
  }

  function overlayName(c) {
    return state.mode === "diff" ? `diff_${c}.nii.gz` : `${state.mode}_${c}.nii.gz`;
  }

  function hasSource(source) {
    return state.meta && state.meta.sources.includes(source);
  }

  async function loadPlanes() {
    const meta = state.meta;
    const [lo, hi] = meta.window;
    for (const p of PLANES) {
      const nv = state.planes[p];
      addColormaps(nv, meta.colours);
      while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1]);
      nv.addVolume(await volume("image.nii.gz", { colormap: "gray", cal_min: lo, cal_max: hi, trustCalMinMax: false }));
      const source = state.mode === "diff" ? (hasSource("pred") && hasSource("truth") ? "diff" : null) : state.mode;
      if (source && (source === "diff" || hasSource(source))) {
        for (let c = 0; c < meta.classes.length; c++) {
          const opts = source === "diff"
            ? { colormap: "gray", lut: DIFF_LUT(state.study.diff_colours) }
            : { colormap: `class${c}`, cal_min: 0.5, cal_max: 1 };
          const v = await volume(overlayName(c), { ...opts, opacity: state.visible[c] ? state.opacity[c] : 0 });
          nv.addVolume(v);
        }
      }
      nv.updateGLVolume();
    }
    setupSliders();
    setupWindow();
  }

  async function loadMeshes() {
    const r = state.render;
    while (r.meshes.length) r.removeMesh(r.meshes[r.meshes.length - 1]);
    state.meshes = [];
    const meta = state.meta;
    const source = state.mode === "truth" ? "truth" : "pred";
    const use = hasSource(source) ? source : meta.sources[0];
    $("render-note").textContent = use ? `(${use === "pred" ? "prediction" : "truth"})` : "(no masks for this case)";
    if (!use) { r.drawScene(); return; }
    const box = await NV.NVMesh.loadFromUrl({
      url: "box_volume.mz3", name: "box_volume.mz3", buffer: (await buffer("box_volume.mz3")).slice(0), gl: r.gl,
      rgba255: [110, 110, 120, 255], opacity: 1, visible: true,
    });
    r.addMesh(box);
    for (let c = 0; c < meta.classes.length; c++) {
      const entry = { c, surface: null, box: null };
      if (meta.voxels[use][c] > 0) {
        const colour = [...meta.colours[c], 255];
        for (const [kind, name] of [["surface", `mesh_${use}_${c}.mz3`], ["box", `box_${use}_${c}.mz3`]]) {
          const m = await NV.NVMesh.loadFromUrl({
            url: name, name, buffer: (await buffer(name)).slice(0), gl: r.gl, rgba255: colour, opacity: 1,
            visible: state.visible[c] && (kind === "surface" || state.boxes),
          });
          r.addMesh(m);
          entry[kind] = m;
        }
      }
      state.meshes.push(entry);
    }
    r.volScaleMultiplier = zoomToClasses(use);
    r.setRenderAzimuthElevation(120, 15);
    r.drawScene();
  }

  // the 3D view fits the volume's outline; zoom so that the classes' joint box fills about 70 % of it
  function zoomToClasses(source) {
    const meta = state.meta;
    const boxes = (meta.boxes[source] || []).filter(Boolean);
    if (!boxes.length) return 1;
    const sp = meta.spacing;
    const diag = (lo, hi) => Math.hypot(...[0, 1, 2].map((a) => (hi[a] - lo[a]) * sp[a]));
    const lo = [0, 1, 2].map((a) => Math.min(...boxes.map((b) => b[0][a])));
    const hi = [0, 1, 2].map((a) => Math.max(...boxes.map((b) => b[1][a])));
    return Math.min(3, Math.max(1, (0.7 * diag([0, 0, 0], meta.shape)) / Math.max(diag(lo, hi), 1e-6)));
  }

  // ------------------------------------------------------------------ crosshair, sliders, window / level
  function axisOf(plane) {
    const vol = state.planes[plane].volumes[0];
    const p = vol.permRAS[RAS_AXIS[plane]];
    const ax = Math.abs(p) - 1;
    return { ax, flip: p < 0, n: vol.dims[ax + 1] };
  }

  function sliceIndex(plane) {
    const { ax, flip, n } = axisOf(plane);
    let i = Math.min(n - 1, Math.max(0, Math.floor(state.planes[plane].scene.crosshairPos[ax] * n)));
    return flip ? n - 1 - i : i;
  }

  function updateSliders() {
    for (const p of PLANES) {
      const { n } = axisOf(p);
      const i = sliceIndex(p);
      $(`slider-${p}`).value = i;
      $(`pos-${p}`).textContent = `${i + 1} / ${n}`;
    }
  }

  function syncFrom(plane) {
    if (state.syncing) return;
    state.syncing = true;
    try {
      const pos = state.planes[plane].scene.crosshairPos;
      for (const p of PLANES) {
        if (p === plane) continue;
        const nv = state.planes[p];
        nv.scene.crosshairPos = new Float32Array([pos[0], pos[1], pos[2]]);
        nv.drawScene();
      }
      updateSliders();
    } finally {
      state.syncing = false;
    }
  }

  function setSlice(plane, index) {
    const { ax, flip, n } = axisOf(plane);
    const i = Math.min(n - 1, Math.max(0, Math.round(index)));
    const frac = ((flip ? n - 1 - i : i) + 0.5) / n;
    const nv = state.planes[plane];
    const pos = new Float32Array(nv.scene.crosshairPos);
    pos[ax] = frac;
    nv.scene.crosshairPos = pos;
    nv.drawScene();
    syncFrom(plane);
  }

  function setupSliders() {
    for (const p of PLANES) {
      const s = $(`slider-${p}`);
      s.min = 0;
      s.max = axisOf(p).n - 1;
      s.step = 1;
    }
    updateSliders();
  }

  function setupWindow() {
    const [gmin, gmax] = state.meta.range;
    const [lo, hi] = state.meta.window;
    const w = $("win-width"), l = $("win-level");
    w.min = Math.max((gmax - gmin) / 1000, 1e-3); w.max = Math.max(gmax - gmin, w.min * 2); w.value = hi - lo;
    l.min = gmin; l.max = gmax; l.value = (lo + hi) / 2;
  }

  function applyWindow() {
    const width = Number($("win-width").value), level = Number($("win-level").value);
    for (const p of PLANES) {
      const nv = state.planes[p];
      nv.volumes[0].cal_min = level - width / 2;
      nv.volumes[0].cal_max = level + width / 2;
      nv.updateGLVolume();
    }
  }

  // ------------------------------------------------------------------ classes: show / hide, opacity
  function applyClasses() {
    for (const p of PLANES) {
      const nv = state.planes[p];
      for (let c = 0; c < state.meta.classes.length; c++) {
        const v = nv.volumes[c + 1];
        if (v) v.opacity = state.visible[c] ? state.opacity[c] : 0;
      }
      nv.updateGLVolume();
    }
    const r = state.render;
    for (const e of state.meshes) {
      if (e.surface) r.setMeshProperty(e.surface.id, "visible", state.visible[e.c]);
      if (e.box) r.setMeshProperty(e.box.id, "visible", state.visible[e.c] && state.boxes);
    }
    r.drawScene();
  }

  function buildClassList() {
    const study = state.study;
    const list = $("class-list");
    list.innerHTML = "";
    const hidden = new URLSearchParams(location.search).getAll("hide");
    study.classes.forEach((name, c) => {
      if (state.visible[c] === undefined) { state.visible[c] = !hidden.includes(name); state.opacity[c] = 0.5; }
      const row = document.createElement("div");
      row.className = "cls";
      row.innerHTML = `<input type="checkbox" id="cls-${c}" ${state.visible[c] ? "checked" : ""}>` +
        `<span class="swatch" style="background:${rgb(study.colours[c])}"></span>` +
        `<label for="cls-${c}">${name}</label>` +
        `<input type="range" id="op-${c}" min="0" max="1" step="0.05" value="${state.opacity[c]}" title="opacity">`;
      list.appendChild(row);
      row.querySelector(`#cls-${c}`).addEventListener("change", (e) => { state.visible[c] = e.target.checked; applyClasses(); });
      row.querySelector(`#op-${c}`).addEventListener("input", (e) => { state.opacity[c] = Number(e.target.value); applyClasses(); });
    });
    const dc = study.diff_colours;
    $("diff-legend").innerHTML = [["tp", "true positive"], ["fp", "false positive"], ["fn", "false negative"]]
      .map(([k, t]) => `<span><span class="swatch" style="background:${rgb(dc[k])}"></span> ${t}</span>`).join("");
  }

  // ------------------------------------------------------------------ panels
  function renderCases() {
    const body = $("cases").querySelector("tbody");
    body.innerHTML = "";
    for (const row of state.study.cases) {
      const tr = document.createElement("tr");
      tr.dataset.key = row.key;
      if (row.key === state.key) tr.className = "selected";
      const marks = state.study.pred && !row.has_pred ? " (no prediction)" : "";
      tr.innerHTML = `<td>${row.key}${marks}</td><td>${fmt(row.score)}</td><td>${fmt(row.dsc)}</td>`;
      tr.addEventListener("click", () => openCase(row.key));
      body.appendChild(tr);
    }
    $("scoring").hidden = !state.study.scoring;
  }

  function renderScores() {
    const meta = state.meta;
    $("case-name").textContent = meta.key;
    const body = $("scores").querySelector("tbody");
    const s = meta.scores;
    if (!s) {
      body.innerHTML = "";
      $("scores-note").textContent = !hasSource("pred") ? "no prediction for this case" : "no truth for this case";
      return;
    }
    const tol = fmt(s.tolerance, 1);
    let html = `<tr><th>class</th><th>DSC</th><th>NSD@${tol}mm</th><th title="95th-percentile Hausdorff distance, mm">HD95 mm</th></tr>`;
    meta.classes.forEach((name, c) => {
      const v = s.classes[name];
      html += `<tr data-class="${name}"><td><span class="swatch" style="background:${rgb(meta.colours[c])}"></span> ${name}</td>` +
        `<td>${fmt(v.dsc)}</td><td>${fmt(v.nsd)}</td><td>${fmt(v.hd95, 2)}</td></tr>`;
    });
    body.innerHTML = html;
    $("scores-note").textContent = `competition score ${fmt(s.score)} (Dice ${fmt(s.dice)}, 1 - Hausdorff ${fmt(s.hausdorff)})`;
  }

  async function loadCurves() {
    const curves = await api.curves();
    $("curves-panel").hidden = curves.length === 0;
    $("curves").innerHTML = curves.map((c) => `<div class="curve-name">${c.name}</div><img src="${c.url}" alt="training curve ${c.name}">`).join("");
  }

  // ------------------------------------------------------------------ cases
  async function openCase(key) {
    const id = ++state.loadId;
    document.body.dataset.state = "loading";
    try {
      const meta = await api.caseMeta(key);
      if (id !== state.loadId) return;
      if (state.key !== key) state.buffers = {};
      state.key = key;
      state.meta = meta;
      renderCases();
      renderScores();
      await loadPlanes();
      await loadMeshes();
      if (id !== state.loadId) return;
      document.body.dataset.case = key;
      document.body.dataset.state = "ready";
    } catch (e) {
      showError(e);
    }
  }

  async function reloadOverlays() {
    document.body.dataset.state = "loading";
    $("diff-legend").hidden = state.mode !== "diff";
    try {
      await loadPlanes();
      await loadMeshes();
      document.body.dataset.state = "ready";
    } catch (e) {
      showError(e);
    }
  }

  async function loadStudy(openKey) {
    state.study = await api.study();
    $("title").textContent = state.study.title;
    $("subtitle").textContent = [state.study.work, state.study.pred && `prediction ${state.study.pred}`,
      state.study.truth && `truth ${state.study.truth}`].filter(Boolean).join("  ·  ");
    buildClassList();
    renderCases();
    const keys = state.study.cases.map((c) => c.key);
    const want = openKey && keys.includes(openKey) ? openKey : keys[0];
    if (state.study.scoring && !REPORT) setTimeout(refreshScores, 1500);
    if (want) await openCase(want);
    else document.body.dataset.state = "ready";
  }

  async function refreshScores() {
    const study = await api.study();
    if (study.work !== state.study.work) return;
    state.study = study;
    renderCases();
    if (study.scoring) setTimeout(refreshScores, 1500);
  }

  // ------------------------------------------------------------------ Segment
  function segmentStatus(s) {
    const msg = $("seg-message"), bar = $("seg-progress"), button = $("seg-button");
    button.disabled = s.state === "running";
    bar.hidden = s.state !== "running";
    if (s.state === "running") {
      bar.max = Math.max(1, s.total);
      bar.value = s.done;
      msg.className = "";
      msg.textContent = s.phase === "predict" ? `predicting: ${s.done} / ${s.total} case-days` : `${s.phase}: ${s.message}`;
    } else if (s.state === "error") {
      msg.className = "error";
      msg.textContent = s.message;
    } else if (s.state === "done") {
      msg.className = "";
      msg.textContent = s.message;
    }
  }

  async function pollSegment(id) {
    const s = await getJSON("api/segment");
    segmentStatus(s);
    if (s.state === "running") { setTimeout(() => pollSegment(id), 400); return; }
    if (s.state === "done" && s.id === id) {
      state.buffers = {};
      state.key = null;
      await loadStudy();
      document.body.dataset.segmented = String(id);
    }
  }

  async function submitSegment(ev) {
    ev.preventDefault();
    const msg = $("seg-message");
    msg.className = "";
    msg.textContent = "starting…";
    const r = await fetch("api/segment", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ folder: $("seg-folder").value, spec: $("seg-spec").value }),
    });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) {
      msg.className = "error";
      msg.textContent = body.error || body.detail || `HTTP ${r.status}`;
      return;
    }
    segmentStatus(body);
    pollSegment(body.id);
  }

  // ------------------------------------------------------------------ start
  async function main() {
    if (!NV) throw new Error("NiiVue did not load (static/vendor/niivue.umd.js): run `python -m viewer.vendor`");
    if (REPORT) document.body.classList.add("static");
    await makeViewers();
    for (const p of PLANES) $(`slider-${p}`).addEventListener("input", (e) => setSlice(p, Number(e.target.value)));
    $("win-width").addEventListener("input", applyWindow);
    $("win-level").addEventListener("input", applyWindow);
    $("mode").addEventListener("change", (e) => { state.mode = e.target.value; reloadOverlays(); });
    $("show-boxes").addEventListener("change", (e) => { state.boxes = e.target.checked; applyClasses(); });
    $("segment-form").addEventListener("submit", (e) => submitSegment(e).catch(showError));
    const params = new URLSearchParams(location.search);
    if (params.get("mode")) { state.mode = params.get("mode"); $("mode").value = state.mode; }
    await loadStudy(params.get("case"));
    if (!REPORT) {
      const seg = state.study.segment || {};
      if (seg.folder) $("seg-folder").value = seg.folder;
      if (seg.spec) $("seg-spec").value = seg.spec;
      if (seg.state && seg.state !== "idle") segmentStatus(seg);
    }
    $("diff-legend").hidden = state.mode !== "diff";
    await loadCurves();
  }

  main().catch(showError);
})();
