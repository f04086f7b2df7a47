"""The README's picture of the triage page, taken from the demo's own outputs (``make screenshot`` after
``make demo``): the newest demo bundle's alerts and session vectors, served by ``loglm triage`` on a free
loopback port, its highest-scoring alert opened in headless Chromium and saved full-page to
``docs/triage.png``.  Run it again whenever the page or the demo changes, so the picture shows what a user
of this commit sees."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def newest_demo_outputs(bundles: Path) -> tuple[Path, Path]:
    """(alerts, embeddings) of the newest bundle that holds both, as ``make demo`` leaves them."""
    found = sorted((b for b in bundles.iterdir() if (b / "alerts" / "detect.jsonl").is_file()
                    and (b / "embeddings" / "inputs.parquet").is_file()), key=lambda b: b.stat().st_mtime)
    if not found:
        raise SystemExit(f"no bundle with alerts and embeddings under {bundles}: run `make demo` first")
    return found[-1] / "alerts" / "detect.jsonl", found[-1] / "embeddings" / "inputs.parquet"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", type=Path, help="alerts JSONL (default: the newest demo bundle's)")
    ap.add_argument("--embeddings", type=Path, help="session vectors (default: the newest demo bundle's)")
    ap.add_argument("--bundles", type=Path, default=ROOT / "runs" / "bundles")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "triage.png")
    args = ap.parse_args(argv)
    alerts, embeddings = (args.alerts, args.embeddings) if args.alerts else newest_demo_outputs(args.bundles)
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")  # else Playwright's own
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    feedback = args.out.with_suffix(".feedback.jsonl")  # the page needs a table; nothing is written to it
    server = subprocess.Popen([sys.executable, "-m", "loglm.cli", "triage", "--alerts", str(alerts),
                               "--embeddings", str(embeddings), "--feedback", str(feedback), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"loglm triage exited: {server.stdout.read()[-2000:]}") from None
                time.sleep(0.25)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("tr[data-alert] a").first.click()  # the list is ranked: the highest score first
            page.wait_for_selector("tr.event")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            height = page.evaluate("document.documentElement.scrollHeight")  # the top of a long page
            page.screenshot(path=str(args.out), full_page=True,
                            clip={"x": 0, "y": 0, "width": 1200, "height": min(height, 1500)})
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        feedback.unlink(missing_ok=True)
    print(f"{args.out}: the triage page of the top alert in {alerts}")
    return args.out


if __name__ == "__main__":
    main()
