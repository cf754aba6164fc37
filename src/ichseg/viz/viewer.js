/* The viewer page of one predicted case (viewer.py writes it): NiiVue (window.niivue, the
   classic bundle beside the page) shows the scan, the label map and the uncertainty map that the
   page carries in base64. Nothing is fetched. `window.ichsegViewer` gives the page's state to a
   console or a test. */
(function () {
  "use strict";
  var settings = JSON.parse(document.getElementById("case-data").textContent);
  var statusLine = document.getElementById("status");
  var readout = document.getElementById("readout");
  var sliceInput = document.getElementById("slice");
  var sliceIndex = document.getElementById("slice-index");
  var levelInput = document.getElementById("level");
  var widthInput = document.getElementById("width");
  var SLICE_TYPES = {axial: 0, coronal: 1, sagittal: 2, multiplanar: 3}; // niivue.SLICE_TYPE
  // The RAS axis a view's slices are stacked along; multiplanar scrolls its axial slices.
  var SLICE_AXIS = {axial: 2, coronal: 1, sagittal: 0, multiplanar: 2};
  var AXIS_NAMES = ["sagittal", "coronal", "axial"];
  var view = "axial";
  var timings = {}; // milliseconds from navigation to the end of each loading step
  function mark(step) { timings[step] = Math.round(performance.now()); }
  var nv, scan, labels, filled, outlined, uncertainty;

  function say(text, isError) {
    statusLine.textContent = text;
    statusLine.className = isError ? "error" : "";
  }

  function embedded(id) {
    var text = document.getElementById(id).textContent;
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text).buffer;
    var binary = atob(text);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  // The voxels of each class that touch another value along a voxel axis (or the volume's
  // border): the class's surface, one voxel thick, the same in every plane shown.
  function surface(img, dims) {
    var nx = dims[1], ny = dims[2], nz = dims[3], plane = nx * ny;
    var out = new Uint8Array(img.length);
    for (var z = 0; z < nz; z++) {
      for (var y = 0; y < ny; y++) {
        var row = z * plane + y * nx;
        for (var x = 0; x < nx; x++) {
          var i = row + x, v = img[i];
          if (v === 0) continue;
          if (x === 0 || x === nx - 1 || y === 0 || y === ny - 1 || z === 0 || z === nz - 1 ||
              img[i - 1] !== v || img[i + 1] !== v || img[i - nx] !== v || img[i + nx] !== v ||
              img[i - plane] !== v || img[i + plane] !== v) out[i] = v;
        }
      }
    }
    return out;
  }

  // Where the page opens: the slice (file's last axis) holding most labelled voxels, at the
  // centre of those voxels; the middle of the scan when nothing is labelled.
  function startVoxel(img, dims) {
    var nx = dims[1], ny = dims[2], nz = dims[3], plane = nx * ny, counts = [], bestCount = 0;
    for (var z = 0; z < nz; z++) {
      var count = 0;
      for (var i = z * plane, end = i + plane; i < end; i++) if (img[i] !== 0) count++;
      counts.push(count);
      bestCount = Math.max(bestCount, count);
    }
    if (bestCount === 0) return [(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2];
    // Of slices as full as each other, the middle one (not the lesion's first, its surface).
    var tied = [];
    counts.forEach(function (c, z) { if (c === bestCount) tied.push(z); });
    var best = tied[Math.floor(tied.length / 2)];
    var sx = 0, sy = 0;
    for (var y = 0; y < ny; y++) {
      for (var x = 0; x < nx; x++) {
        if (img[best * plane + y * nx + x] !== 0) { sx += x; sy += y; }
      }
    }
    return [sx / bestCount, sy / bestCount, best];
  }

  function voxelToMm(image, vox) {
    var a = image.hdr.affine;
    return [0, 1, 2].map(function (r) {
      return a[r][0] * vox[0] + a[r][1] * vox[1] + a[r][2] * vox[2] + a[r][3];
    });
  }

  function sliceAxis() { return SLICE_AXIS[view]; }

  function currentSlice() { return Math.round(nv.frac2vox(nv.scene.crosshairPos)[sliceAxis()]); }

  function sliceCount() { return scan.dimsRAS[sliceAxis() + 1]; }

  function setSlice(index) {
    var vox = nv.frac2vox(nv.scene.crosshairPos);
    vox[sliceAxis()] = Math.max(0, Math.min(sliceCount() - 1, index));
    nv.scene.crosshairPos = nv.vox2frac(vox);
    nv.drawScene();
    nv.createOnLocationChange();
  }

  function showSlice() {
    sliceInput.max = String(sliceCount() - 1);
    sliceInput.value = String(currentSlice());
    sliceIndex.textContent = AXIS_NAMES[sliceAxis()] + " " + (currentSlice() + 1) + " / " +
      sliceCount();
  }

  function classAt(vox) {
    // The label volume may hold only the outline: read the class from the filled map.
    var shown = labels.img;
    labels.img = filled;
    var code = Math.round(labels.getValue(vox[0], vox[1], vox[2]));
    labels.img = shown;
    var found = settings.classes.filter(function (c) { return c.code === code; })[0];
    return code === 0 ? "background" : found ? found.name : "code " + code;
  }

  function showLocation(location) {
    var mm = location.mm;
    var vox = scan.mm2vox([mm[0], mm[1], mm[2]]);
    var inside = [0, 1, 2].every(function (a) { return vox[a] >= 0 && vox[a] < scan.dimsRAS[a + 1]; });
    var lines = ["RAS " + [0, 1, 2].map(function (a) { return mm[a].toFixed(1); }).join(", ") + " mm"];
    if (inside) {
      lines.push("HU " + Math.round(scan.getValue(vox[0], vox[1], vox[2])) + "   " + classAt(vox));
      if (uncertainty) {
        lines.push("uncertainty " + uncertainty.getValue(vox[0], vox[1], vox[2]).toFixed(2));
      }
    }
    readout.textContent = lines.join("\n");
    showSlice();
  }

  function setWindow(level, width, preset) {
    width = Math.max(1, width);
    scan.cal_min = level - width / 2;
    scan.cal_max = level + width / 2;
    nv.updateGLVolume();
    showWindow(preset);
  }

  function showWindow(preset) {
    var width = scan.cal_max - scan.cal_min;
    levelInput.value = String(Math.round(scan.cal_min + width / 2));
    widthInput.value = String(Math.round(width));
    Array.prototype.forEach.call(document.querySelectorAll("[data-window]"), function (b) {
      b.classList.toggle("active", b.getAttribute("data-window") === preset);
    });
  }

  function labelOpacity() {
    var shown = document.getElementById("labels-shown").checked;
    return shown ? Number(document.getElementById("labels-opacity").value) / 100 : 0;
  }

  function setLabelStyle(style) {
    labels.img = style === "fill" ? filled : outlined;
    nv.updateGLVolume();
  }

  function wireControls() {
    Array.prototype.forEach.call(document.querySelectorAll('input[name="view"]'), function (input) {
      input.addEventListener("change", function () {
        view = input.value;
        nv.setSliceType(SLICE_TYPES[view]);
        showSlice();
      });
    });
    sliceInput.addEventListener("input", function () { setSlice(Number(sliceInput.value)); });
    document.addEventListener("keydown", function (event) {
      // Arrow keys keep their meaning in number fields and sliders (the slice slider moves the
      // slice itself); elsewhere, radio buttons included, they move through the slices.
      if (event.target.tagName === "INPUT" && event.target.type !== "radio" &&
          event.target.type !== "checkbox") return;
      var step = {ArrowUp: 1, PageUp: 1, ArrowDown: -1, PageDown: -1}[event.key];
      if (!step) return;
      event.preventDefault();
      setSlice(currentSlice() + step);
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-window]"), function (button) {
      button.addEventListener("click", function () {
        var preset = button.getAttribute("data-window");
        setWindow(settings.windows[preset][0], settings.windows[preset][1], preset);
      });
    });
    [levelInput, widthInput].forEach(function (input) {
      input.addEventListener("change", function () {
        setWindow(Number(levelInput.value), Number(widthInput.value), null);
      });
    });
    nv.onIntensityChange = function (volume) { if (volume === scan) showWindow(null); };
    ["labels-shown", "labels-opacity"].forEach(function (id) {
      document.getElementById(id).addEventListener("input", function () {
        nv.setOpacity(1, labelOpacity());
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll('input[name="style"]'), function (input) {
      input.addEventListener("change", function () { setLabelStyle(input.value); });
    });
    if (uncertainty) {
      ["uncertainty-shown", "uncertainty-opacity"].forEach(function (id) {
        document.getElementById(id).addEventListener("input", function () {
          var shown = document.getElementById("uncertainty-shown").checked;
          var value = Number(document.getElementById("uncertainty-opacity").value) / 100;
          nv.setOpacity(2, shown ? value : 0);
        });
      });
    }
  }

  async function main() {
    var brain = settings.windows.brain;
    nv = new niivue.Niivue({
      backColor: [0, 0, 0, 1], isRadiologicalConvention: true, isColorbar: false,
      multiplanarShowRender: niivue.SHOW_RENDER.NEVER, dragAndDropEnabled: false,
      crosshairColor: [0.35, 0.55, 1, 0.9], crosshairWidth: 0.3, crosshairWidthUnit: "percent",
      crosshairGap: 6, loadingText: "", logLevel: "error",
      // NiiVue's own keys would change the view behind the page's controls.
      viewModeHotKey: "", clipPlaneHotKey: "", cycleClipPlaneHotKey: ""
    });
    await nv.attachToCanvas(document.getElementById("gl"));
    mark("attached");
    scan = await niivue.NVImage.new(embedded("scan"), "scan.nii.gz", "gray", 1, null,
      brain[0] - brain[1] / 2, brain[0] + brain[1] / 2, true);
    mark("scan read");
    labels = await niivue.NVImage.new(embedded("labels"), "labels.nii.gz", "", 1, null, NaN, NaN,
      true);
    labels.setColormapLabel(settings.lut);
    filled = labels.img;
    outlined = surface(filled, labels.hdr.dims);
    labels.img = outlined;
    var layers = [scan, labels];
    mark("labels read");
    if (settings.uncertainty) {
      // 1 - the winning class's probability: at most 0.5 for two classes; below 0.05 is sure.
      uncertainty = await niivue.NVImage.new(embedded("uncertainty"), "uncertainty.nii.gz",
        "warm", 0, null, 0.05, 0.5, true);
      layers.push(uncertainty);
      mark("uncertainty read");
    }
    // All layers at once: NiiVue redraws every layer (and the scan's gradients) per volume added.
    nv.volumes = layers;
    nv.setVolume(scan, 0);
    mark("layers drawn");
    nv.onLocationChange = showLocation;
    wireControls();
    nv.setSliceType(SLICE_TYPES[view]);
    nv.scene.crosshairPos = nv.mm2frac(voxelToMm(labels, startVoxel(filled, labels.hdr.dims)));
    nv.drawScene();
    nv.createOnLocationChange();
    showWindow("brain");
    say(scan.hdr.dims.slice(1, 4).join(" \u00d7 ") + " voxels");
    mark("ready");
    document.body.setAttribute("data-state", "ready");
  }

  window.ichsegViewer = {
    settings: settings,
    timings: timings,
    get niivue() { return nv; },
    setSlice: function (index) { setSlice(index); },
    slice: function () { return currentSlice(); },
    sliceCount: function () { return sliceCount(); }
  };

  if (typeof niivue === "undefined") {
    say("niivue.umd.js did not load: keep this page in its viewer folder beside it", true);
    document.body.setAttribute("data-state", "error");
    return;
  }
  main().catch(function (error) {
    say("could not show this case: " + error, true);
    document.body.setAttribute("data-state", "error");
    console.error(error);
  });
})();
