"""The viewers readers use, as test peers: OHIF's prebuilt viewer (the npm package @ohif/app, its dist/
installed by viewers/install.sh) served by viewers/serve.py on one origin with Orthanc's DICOMweb, opened in
headless Chromium (Debian package `chromium`) driven through its DevTools protocol by Playwright (which never
downloads a browser of its own here); and dcmjs, OHIF's DICOM library, reading files in Node."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, _port_open, free_port, wait_until

VIEWERS = REPO / "viewers"
OHIF_DIST = VIEWERS / "ohif" / "dist"
DCMJS = VIEWERS / "node_modules" / "dcmjs"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A reader who has seen OHIF's onboarding tour and its investigational-use notice before: neither covers the
# viewer (the notice is OHIF's own research disclaimer; ours is in every object).
READER_SEEN_NOTICES = (
    "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
    "sessionStorage.setItem('investigationalUseDialog', 'hidden');"
)
WINDOW = {"width": 720, "height": 480}  # small: Chromium renders with its software GL here
TINT_CHROMA = 24  # a canvas pixel is coloured by a segment when its RGB channels differ by more than this


def require_viewers() -> None:
    peers = (("OHIF (viewers/install.sh)", OHIF_DIST / "index.html"), ("dcmjs", DCMJS), ("chromium", CHROMIUM))
    missing = [what for what, path in peers if not path.exists()]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        pytest.fail(f"viewer peers missing: {', '.join(missing)} (scripts/setup.sh --with-postgres installs them)")


@contextmanager
def ohif_server(dicomweb_root: str) -> Iterator[str]:
    """viewers/serve.py: OHIF and the PACS's DICOMweb on one origin; yields the base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(VIEWERS / "serve.py"), "--dicomweb", dicomweb_root, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: process.poll() is not None or _port_open(port), 30)
        assert process.poll() is None, "viewers/serve.py exited"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def chromium(profile: Path) -> Iterator[object]:
    """Headless Debian Chromium with a fresh profile, driven by Playwright over the DevTools protocol."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS[1:],  # --headless comes from headless=True
            viewport=WINDOW,
        )
        try:
            yield context
        finally:
            context.close()


@dataclass(frozen=True)
class DrawnSlice:
    """What OHIF drew on one source image: at each pixel centre, whether a segment colours it."""

    sop_instance_uid: str
    tinted: np.ndarray  # bool (rows, columns)


# Runs in the page: for each image of the viewport's stack, show it, wait until its segmentation is drawn and
# painted, then read the canvas at the centre of every pixel of the source image (world -> canvas by the
# viewport's own transform). Waits on cornerstone's events, never on time.
READ_OVERLAY_JS = """
async ({ viewportId, threshold, sopInstanceUids }) => {
  const cs = window.cornerstone, tools = window.cornerstoneTools;
  const viewport = cs.getRenderingEngines()[0].getViewport(viewportId);
  // Every image in the cache first: then showing one is synchronous up to its render, and cornerstone's events
  // come in one order: STACK_NEW_IMAGE, then the render of image and segmentation (IMAGE_RENDERED, then
  // SEGMENTATION_RENDERED). The canvas is read at that SEGMENTATION_RENDERED, never after a delay.
  const ids = viewport.getImageIds();
  await Promise.all(ids.map(id => cs.imageLoader.loadAndCacheImage(id)));
  const show = index => new Promise((resolve, reject) => {
    let shown = false;
    const onNewImage = evt => { if (evt.detail.imageIdIndex === index) shown = true; };
    const onSegmentation = evt => { if (shown && evt.detail.viewportId === viewportId) { done(); resolve(); } };
    const done = () => {
      clearTimeout(timer);
      viewport.element.removeEventListener(cs.Enums.Events.STACK_NEW_IMAGE, onNewImage);
      cs.eventTarget.removeEventListener(tools.Enums.Events.SEGMENTATION_RENDERED, onSegmentation);
    };
    const timer = setTimeout(() => { done(); reject(new Error(`image ${index} not drawn within 60 s`)); }, 60000);
    viewport.element.addEventListener(cs.Enums.Events.STACK_NEW_IMAGE, onNewImage);
    cs.eventTarget.addEventListener(tools.Enums.Events.SEGMENTATION_RENDERED, onSegmentation);
    viewport.setImageIdIndex(index).catch(error => { done(); reject(error); });
  });
  const uidOf = id => cs.metaData.get('sopCommonModule', id).sopInstanceUID;
  const wanted = new Set(sopInstanceUids);
  const slices = [];
  for (let index = 0; index < ids.length; index++) {
    if (!wanted.has(uidOf(ids[index]))) continue;
    if (viewport.getCurrentImageIdIndex() === index) await show(index === 0 ? 1 : index - 1);  // a real change
    await show(index);
    const imageId = viewport.getCurrentImageId();
    const plane = cs.metaData.get('imagePlaneModule', imageId);
    const canvas = viewport.canvas;
    const scale = canvas.width / canvas.clientWidth;
    const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const { rows, columns, imagePositionPatient: p, rowCosines: u, columnCosines: v } = plane;
    const dr = plane.rowPixelSpacing, dc = plane.columnPixelSpacing;
    let tinted = '';
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < columns; c++) {
        const world = [0, 1, 2].map(k => p[k] + c * dc * u[k] + r * dr * v[k]);
        const [x, y] = viewport.worldToCanvas(world).map(value => Math.floor(value * scale));
        if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) { tinted += '?'; continue; }
        const o = 4 * (y * canvas.width + x);
        const chroma = Math.max(rgba[o], rgba[o + 1], rgba[o + 2]) - Math.min(rgba[o], rgba[o + 1], rgba[o + 2]);
        tinted += chroma > threshold ? '1' : '0';
      }
    }
    slices.push({ sopInstanceUid: uidOf(imageId), rows, columns, tinted });
  }
  return slices;
}
"""

SEGMENT_COLOURS_JS = """
({ viewportId }) => {
  const tools = window.cornerstoneTools;
  const colours = {};
  for (const segmentation of tools.segmentation.state.getSegmentations()) {
    for (const index of Object.keys(segmentation.segments)) {
      const colour = tools.segmentation.config.color.getSegmentIndexColor(
        viewportId, segmentation.segmentationId, Number(index));
      colours[segmentation.segments[index].label] = Array.from(colour).slice(0, 3);
    }
  }
  return colours;
}
"""


class OhifPage:
    """One OHIF tab opened on a study, as a reader uses it (double-clicks a series in the study browser)."""

    def __init__(self, context: object, base_url: str, study_instance_uid: str) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.add_init_script(READER_SEEN_NOTICES)
        self.page.goto(f"{base_url}/viewer?StudyInstanceUIDs={study_instance_uid}")
        # The first image is shown before anything else is opened (switching earlier races OHIF's own start).
        self.page.wait_for_function(
            "() => { const e = window.cornerstone && window.cornerstone.getRenderingEngines()[0];"
            " const v = e && e.getViewports()[0]; return !!(v && v.getCurrentImageId && v.getCurrentImageId()); }",
            timeout=120_000,
        )

    def close(self) -> None:
        self.page.close()

    def viewport_id(self) -> str:
        return self.page.evaluate("() => window.services.viewportGridService.getActiveViewportId()")

    def open_series(self, series_description: str) -> None:
        """Double-click the series' entry in the study browser (loads it into the active viewport)."""
        self.page.get_by_text(series_description, exact=True).first.dblclick()

    def open_segmentation(self, series_description: str) -> str:
        """Open a SEG series; returns the viewport showing it once its segmentation is drawn there."""
        self.open_series(series_description)
        self.page.wait_for_function(
            "() => { const id = window.services.viewportGridService.getActiveViewportId();"
            " return window.cornerstoneTools.segmentation.state.getSegmentationRepresentations(id).length > 0; }",
            timeout=120_000,
        )
        return self.viewport_id()

    def drawn_slices(self, viewport_id: str, sop_instance_uids: list[str]) -> list[DrawnSlice]:
        found = self.page.evaluate(
            READ_OVERLAY_JS,
            {"viewportId": viewport_id, "threshold": TINT_CHROMA, "sopInstanceUids": sop_instance_uids},
        )
        slices = []
        for item in found:
            text = item["tinted"]
            assert "?" not in text, f"{item['sopInstanceUid']}: part of the image is outside the viewport"
            tinted = np.frombuffer(text.encode(), np.uint8).reshape(item["rows"], item["columns"]) == ord("1")
            slices.append(DrawnSlice(item["sopInstanceUid"], tinted))
        return slices

    def segment_colours(self, viewport_id: str) -> dict[str, tuple[int, int, int]]:
        return {k: tuple(v) for k, v in self.page.evaluate(SEGMENT_COLOURS_JS, {"viewportId": viewport_id}).items()}

    def text(self) -> str:
        return self.page.inner_text("body")


def dcmjs_numbers(items: list[dict]) -> list[float]:
    """Every NUM value of an SR content tree as read-with-dcmjs.mjs gives it, in tree order."""
    return [v for i in items for v in ([i["value"]] if i["valueType"] == "NUM" else []) + dcmjs_numbers(i["children"])]


def read_with_dcmjs(paths: list[Path]) -> list[dict]:
    """Each file read by dcmjs in Node (viewers/read-with-dcmjs.mjs): its SEG frames or SR measurements."""
    completed = subprocess.run(
        ["node", str(VIEWERS / "read-with-dcmjs.mjs"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=VIEWERS,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout)
