"""Screenshot of the serving page (docs/serve-page.png) in Debian's headless Chromium.

Starts ``python -m latticerec.serve MODEL_DIR`` on a free 127.0.0.1 port, shows a user's top items,
clicks the first one for its similar items, adds an item by pasting the (fused) features of a trained
item (CB over one modality) and saves the window:

    python benchmarks/serve_screenshot.py /tmp/ml100k-cb --user 1 --out docs/serve-page.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_browser import chrome, free_port, start_server  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--user", required=True)
    p.add_argument("--k", default="10")
    p.add_argument("--paste-row", type=int, default=0, help="trained item whose features are pasted")
    p.add_argument("--out", type=Path, default=Path("docs/serve-page.png"))
    args = p.parse_args()

    from safetensors.numpy import load_file
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    proc = start_server(args.model_dir, port)
    with tempfile.TemporaryDirectory() as tmp:
        driver = chrome(Path(tmp))
        try:
            driver.set_window_size(1400, 1000)
            wait = WebDriverWait(driver, 30)
            driver.get(f"http://127.0.0.1:{port}/")
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            driver.find_element(By.ID, "user").send_keys(args.user)
            driver.find_element(By.ID, "k").clear()
            driver.find_element(By.ID, "k").send_keys(args.k)
            driver.find_element(By.ID, "show").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recs tbody tr")) == int(args.k))
            driver.find_elements(By.CSS_SELECTOR, "#recs a.item")[0].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#similar tbody tr"))
            boxes = driver.find_elements(By.CSS_SELECTOR, "#modalities textarea")
            arrays = load_file(args.model_dir / "arrays.safetensors")
            if len(boxes) == 1 and "fold.item_unit" in arrays:  # CB over one modality: paste a row
                row = arrays["fold.item_unit"][args.paste_row]
                driver.execute_script("arguments[0].value = arguments[1]", boxes[0],
                                      ", ".join(f"{v:.5f}" for v in row))
                driver.find_element(By.ID, "new-item").send_keys("my-new-item")
                driver.find_element(By.ID, "add").click()
                wait.until(lambda d: "added" in d.find_element(By.ID, "add-result").text)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(timeout=10)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
