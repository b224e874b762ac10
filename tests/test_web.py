"""The web page in real headless Chromium: Debian's chromium driven by Playwright (PyPI).

One browser for the module, one server on a free port serving ``web/`` and a
folder of pixels-in models exported from the shared briefly trained model.
The page must give Python ONNX Runtime's probabilities for the same pixels-in
file, classify digits drawn with real mouse events, load the ``.ort`` files,
and answer bad input with a message.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from mnist_edge.runtime import layout
from mnist_edge.runtime.atomic import atomic_path
from mnist_edge.tools.webserve import WebConfig, missing_runtime_files, running

REPO = Path(__file__).resolve().parents[1]
WEB_DIR = REPO / "web"
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
N_PICTURES = 200
EXPORT_EVAL = 400  # test images the fixture's export checks its files on
DATA_DIR = REPO / layout.DEFAULT_DATA_DIR
TIMEOUT_MS = 30_000


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="browser tests need Debian's chromium: apt-get install chromium",
    ),
    pytest.mark.skipif(
        bool(missing_runtime_files(WEB_DIR)),
        reason="browser tests need the page's onnxruntime-web: cd web && npm ci",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need playwright: pip install -e '.[dev]'"
)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path) -> Path:
    """The pixels-in models (fp32, int8, their .ort twins) and mnist.meta.json, as export writes them.

    The real export of the shared briefly trained model, its checks on a small slice
    (the full validation is the export's own tests and ``make export``).
    """
    from mnist_edge.export.config import ExportConfig
    from mnist_edge.export.pipeline import export_onnx

    out = tmp_path_factory.mktemp("pixels-models")
    config = ExportConfig(
        data_dir=DATA_DIR,
        ort=True,
        test_limit=EXPORT_EVAL,
        pixels_images=EXPORT_EVAL // 16,
        int8_max_drop=0.01,  # a 255-step model on 400 images; the product bound is make export's
        calibration_images=200,
    )
    export_onnx(trained_checkpoint, out, config)
    return out


@pytest.fixture(scope="module")
def page_url(models_dir: Path) -> Iterator[str]:
    """The page, served with the models on a free port of 127.0.0.1."""
    with running(WebConfig(web_dir=WEB_DIR, models_dir=models_dir, port=0, quiet=True)) as url:
        yield url


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile under the test's tmp."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 960, "height": 760},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


class PageSession:
    """One open page and what its console said."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(str(message.text))

    def open(self, url: str) -> PageSession:
        self.page.goto(url)
        self.page.wait_for_function("document.body.dataset.state !== 'loading'")
        return self

    @property
    def state(self) -> str:
        return str(self.page.evaluate("document.body.dataset.state"))

    @property
    def message(self) -> str:
        return str(self.page.locator("#message").text_content() or "")

    def use_model(self, precision: str, fmt: str = "onnx") -> None:
        self.page.evaluate("([p, f]) => mnistEdge.useModel(p, f)", [precision, fmt])

    def classify_pngs(self, pngs: list[bytes]) -> list[dict[str, Any]]:
        """Decode each PNG in the page as the page does (canvas -> luminance) and classify it."""
        return list(
            self.page.evaluate(
                """async (items) => {
                    const out = [];
                    for (const b64 of items) {
                        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                        const picture = await mnistEdge.pixelsFromBlob(new Blob([bytes], {type: "image/png"}));
                        const r = await mnistEdge.classify(picture.pixels, picture.height, picture.width);
                        let bin = "";
                        for (const v of picture.pixels) bin += String.fromCharCode(v);
                        out.push({probabilities: r.probabilities, label: r.label, model: r.model, pixels: btoa(bin)});
                    }
                    return out;
                }""",
                [base64.b64encode(png).decode("ascii") for png in pngs],
            )
        )

    def seq(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.seq ?? 0)"))


@pytest.fixture(scope="module")
def main_page(browser_context: Any, page_url: str) -> Iterator[PageSession]:
    """The page as a user opens it, shared by the tests that expect no errors."""
    session = PageSession(browser_context.new_page()).open(page_url)
    yield session
    session.page.close()


@pytest.fixture
def fresh_page(browser_context: Any) -> Iterator[PageSession]:
    """A page of its own, for tests that make things fail on purpose."""
    session = PageSession(browser_context.new_page())
    yield session
    session.page.close()


# ---------------------------------------------------------------- pictures


def _png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _test_pictures(mnist: Any, count: int) -> list[np.ndarray]:
    """``count`` MNIST test digits as uint8 pictures of mixed sizes and both polarities."""
    digits = (mnist.test_images[:count, 0].numpy() * 255.0 + 0.5).astype(
        np.uint8
    )  # (count, 28, 28)
    rng = np.random.default_rng(8)
    pictures = []
    for i, digit in enumerate(digits):
        kind = i % 5
        if kind == 0:
            pic = digit
        elif kind == 1:  # dark on light, as scanned
            pic = 255 - digit
        elif kind == 2:  # upscaled, non-square
            w, h = int(rng.integers(40, 120)), int(rng.integers(40, 120))
            pic = np.asarray(Image.fromarray(digit).resize((w, h), Image.Resampling.BILINEAR))
        elif kind == 3:  # off-centre on a larger canvas
            side = int(rng.integers(48, 96))
            canvas = np.zeros((side, side + 17), np.uint8)
            y, x = int(rng.integers(0, side - 28)), int(rng.integers(0, side - 11))
            canvas[y : y + 28, x : x + 28] = digit
            pic = canvas
        else:  # enlarged, inverted, on a light margin
            big = np.asarray(Image.fromarray(digit).resize((70, 70), Image.Resampling.BICUBIC))
            pic = np.pad(255 - big, ((9, 21), (30, 4)), constant_values=255)
        pictures.append(np.ascontiguousarray(pic, dtype=np.uint8))
    return pictures


def _python_ort(model: Path, pictures: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Python ONNX Runtime on the same file: probabilities (N, 10) and labels (N,)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probs, labels = [], []
    for pic in pictures:
        p, label = session.run(["probabilities", "label"], {"pixels": pic})
        probs.append(p)
        labels.append(int(label))
    return np.stack(probs), np.asarray(labels)


# ---------------------------------------------------------------- tests


def test_page_loads_with_model_facts_and_no_console_errors(main_page: PageSession) -> None:
    assert main_page.state == "ready", main_page.message
    info = main_page.page.locator("#model-info")
    assert info.locator("[data-field='file']").text_content() == "mnist.pixels.onnx (fp32)"
    assert info.locator("[data-field='size']").text_content().endswith("KiB")
    assert info.locator("[data-field='accuracy on test pictures']").text_content().endswith("%")
    assert main_page.page.locator("#bars li").count() == 10
    assert main_page.errors == []


def test_page_fetches_nothing_from_elsewhere(main_page: PageSession, page_url: str) -> None:
    requests = main_page.requests
    assert any(url.endswith("/vendor/ort-wasm-simd-threaded.wasm") for url in requests)
    assert any(url.endswith("/models/mnist.meta.json") for url in requests)
    assert [url for url in requests if not url.startswith(page_url)] == []


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_page_probabilities_equal_python_onnx_runtime(
    main_page: PageSession, models_dir: Path, mnist: Any, precision: str
) -> None:
    pictures = _test_pictures(mnist, N_PICTURES)
    meta = json.loads((models_dir / layout.META_JSON).read_text())
    expected, expected_labels = _python_ort(
        models_dir / meta["models"][precision]["file"], pictures
    )

    main_page.use_model(precision)
    results = main_page.classify_pngs([_png(pic) for pic in pictures])

    # The page ran that file, on exactly the pixels Python has (decoded from PNG in the page).
    assert {r["model"] for r in results} == {meta["models"][precision]["file"]}
    for pic, result in zip(pictures, results, strict=True):
        assert base64.b64decode(result["pixels"]) == pic.tobytes()
    got = np.asarray([r["probabilities"] for r in results], dtype=np.float64)
    labels = np.asarray([r["label"] for r in results])
    assert got.shape == (N_PICTURES, 10)
    np.testing.assert_array_equal(labels, got.argmax(axis=1))
    agreement = float((labels == expected_labels).mean())
    max_diff = float(np.abs(got - expected).max())
    print(f"{precision}: max |Δp| {max_diff:.2e}, label agreement {agreement:.2%}")
    if precision == "fp32":
        assert agreement == 1.0
        assert max_diff <= 1e-4
    else:
        assert agreement >= 0.995
    assert main_page.errors == []


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_page_runs_the_ort_format_files(
    main_page: PageSession, models_dir: Path, mnist: Any, precision: str
) -> None:
    meta = json.loads((models_dir / layout.META_JSON).read_text())
    ort_file = meta["models"][precision]["ort_file"]
    pictures = _test_pictures(mnist, 20)
    expected, expected_labels = _python_ort(models_dir / ort_file, pictures)

    main_page.use_model(precision, "ort")
    results = main_page.classify_pngs([_png(pic) for pic in pictures])
    main_page.use_model("fp32")

    assert {r["model"] for r in results} == {ort_file}
    got = np.asarray([r["probabilities"] for r in results])
    np.testing.assert_array_equal([r["label"] for r in results], expected_labels)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert main_page.errors == []


# Strokes in pad pixels (the pad is 280x280), drawn with real mouse events.
def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n + 1)
    return [(cx + rx * np.sin(a), cy - ry * np.cos(a)) for a in t]


STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "1": [[(142, 45), (138, 235)]],
    "7": [[(75, 60), (205, 60), (120, 240)]],
    "0": [_ellipse(140, 140, 62, 92, n=20)],
}


def _draw(session: PageSession, strokes: list[list[tuple[float, float]]]) -> str:
    """Clear the pad, draw ``strokes`` with the mouse, wait for the page's answer; returns the label."""
    page = session.page
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    assert box is not None
    scale = box["width"] / 280
    before = session.seq()
    for stroke in strokes:
        x0, y0 = stroke[0]
        page.mouse.move(box["x"] + x0 * scale, box["y"] + y0 * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=3)
        page.mouse.up()
    page.wait_for_function(f"Number(document.body.dataset.seq ?? 0) >= {before + len(strokes)}")
    return str(page.locator("#label").text_content())


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("digit", list(STROKES))
def test_digits_drawn_with_the_mouse_are_classified_as_drawn(
    main_page: PageSession, digit: str, precision: str
) -> None:
    main_page.page.check(f"input[name=precision][value={precision}]")
    main_page.page.wait_for_function(
        f"document.querySelector('#model-info [data-field=file]').textContent.includes('({precision})')"
    )
    assert _draw(main_page, STROKES[digit]) == digit
    assert main_page.errors == []


def test_a_digit_drawn_with_a_finger_is_classified(main_page: PageSession) -> None:
    page = main_page.page
    page.check("input[name=precision][value=fp32]")
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    assert box is not None
    scale = box["width"] / 280
    cdp = page.context.new_cdp_session(page)
    before = main_page.seq()
    points = [(box["x"] + 140 * scale, box["y"] + y * scale) for y in range(45, 240, 10)]
    for kind, point in [("touchStart", points[0])] + [("touchMove", p) for p in points[1:]]:
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": kind, "touchPoints": [{"x": point[0], "y": point[1]}]},
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()
    page.wait_for_function(f"Number(document.body.dataset.seq ?? 0) > {before}")
    assert page.locator("#label").text_content() == "1"
    assert main_page.errors == []


def test_screenshot_of_a_drawn_digit(main_page: PageSession) -> None:
    main_page.page.check("input[name=precision][value=fp32]")
    assert _draw(main_page, STROKES["7"]) == "7"
    target = REPO / layout.DEFAULT_DIR / "web.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        main_page.page.screenshot(path=str(tmp), type="png", full_page=True)
    with Image.open(target) as shot:
        assert shot.format == "PNG"
        assert shot.width >= 900


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_a_dropped_or_pasted_picture_is_classified(
    main_page: PageSession, mnist: Any, how: str
) -> None:
    digit = (mnist.test_images[0, 0].numpy() * 255.0 + 0.5).astype(np.uint8)  # a 7
    picture = np.pad(255 - digit, 30, constant_values=255)  # dark on light, 88x88
    before = main_page.seq()
    main_page.page.evaluate(
        """([how, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "seven.png", {type: "image/png"}));
            const event = how === "drop"
                ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
                : new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true});
            document.querySelector("#pad").dispatchEvent(event);
        }""",
        [how, base64.b64encode(_png(picture)).decode("ascii")],
    )
    main_page.page.wait_for_function(f"Number(document.body.dataset.seq ?? 0) > {before}")
    assert main_page.page.locator("#label").text_content() == str(int(mnist.test_labels[0]))
    assert main_page.errors == []


def test_a_file_that_is_not_a_picture_shows_a_message(main_page: PageSession) -> None:
    page = main_page.page
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"}]
    )
    page.wait_for_function("!document.querySelector('#message').hidden")
    assert "notes.txt is not a picture this browser can read" in main_page.message
    assert page.locator("#label").text_content() == "–"
    # The page goes on working.
    assert _draw(main_page, STROKES["1"]) == "1"
    assert page.locator("#message").is_hidden()


def test_a_blank_canvas_or_picture_shows_a_message(main_page: PageSession) -> None:
    page = main_page.page
    page.click("#clear")
    page.click("#classify")
    page.wait_for_function("!document.querySelector('#message').hidden")
    assert "The canvas is blank" in main_page.message
    assert page.locator("#label").text_content() == "–"

    page.set_input_files(
        "#file",
        files=[
            {
                "name": "white.png",
                "mimeType": "image/png",
                "buffer": _png(np.full((40, 30), 255, np.uint8)),
            }
        ],
    )
    page.wait_for_function("document.querySelector('#message').textContent.includes('white.png')")
    assert "white.png is blank" in main_page.message


def test_a_model_that_fails_to_load_shows_a_message_and_the_page_keeps_working(
    fresh_page: PageSession, page_url: str, mnist: Any
) -> None:
    page = fresh_page.page
    page.route(
        "**/models/mnist.pixels.int8.onnx",
        lambda route: route.fulfill(status=200, body=b"this is not a model"),
    )
    fresh_page.open(page_url)
    assert fresh_page.state == "ready"
    # click, not check: the page may put the switch back to fp32 before Playwright looks
    page.click("input[name=precision][value=int8]")
    page.wait_for_function("document.querySelector('#message').className === 'error'")
    assert "Could not load the int8 model mnist.pixels.int8.onnx" in fresh_page.message
    # Still on fp32, and it still classifies.
    assert page.is_checked("input[name=precision][value=fp32]")
    digit = _test_pictures(mnist, 1)[0]
    page.set_input_files(
        "#file", files=[{"name": "digit.png", "mimeType": "image/png", "buffer": _png(digit)}]
    )
    page.wait_for_function("document.querySelector('#message').hidden")
    assert page.locator("#label").text_content() in [str(i) for i in range(10)]


def test_missing_model_metadata_shows_a_message(fresh_page: PageSession, page_url: str) -> None:
    fresh_page.page.route("**/models/mnist.meta.json", lambda route: route.fulfill(status=404))
    fresh_page.open(page_url)
    assert fresh_page.state == "error"
    assert "Could not fetch mnist.meta.json (HTTP 404)" in fresh_page.message
    assert "make export" in fresh_page.message
