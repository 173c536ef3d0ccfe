"""Soak the running app: server memory over many API sessions, disk over many uploads.

    python -m train.benchmark_soak [--bundle PATH_OR_REPO] [--calls 200] [--uploads 100]

Starts `python app.py` on 127.0.0.1 (a port of its own, its Gradio cache in a temporary
folder) and talks to it only there. First `--calls` /swap requests of two 3-s examples,
each from a new gradio_client (a new session, as a script calling the API makes): the
server's resident memory is printed as they go, and stays flat once MDVAE_MAX_SESSIONS
sessions hold their encodings. Then `--uploads` distinct files of `--upload-mb` each are
posted to /gradio_api/upload (outside the queue, as any caller can): the cache folder's size
is printed as they go, one every `--upload-every` seconds: it exceeds `--disk-mb`
(MDVAE_DISK_MB) only by what arrives between two prunings (every PRUNE_EVERY_S). Last, the
server gets SIGTERM and the program checks that its temporary folders went with it. Without
a bundle in checkpoints/ (and no --bundle or $MDVAE_BUNDLE), a random bundle of the shipped
sizes is served.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train.benchmark_app import CLIP_A, CLIP_B, random_bundle

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def folder_mb(folder: Path) -> float:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except FileNotFoundError:  # pruned while we looked
            pass
    return total / 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: str, cache: Path, tmp: Path, disk_mb: float) -> tuple[
        subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, MDVAE_BUNDLE=bundle, GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_SERVER_PORT=str(port), GRADIO_TEMP_DIR=str(cache), TMPDIR=str(tmp),
               GRADIO_ANALYTICS_ENABLED="False", MDVAE_DISK_MB=str(disk_mb))
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with status {server.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.kill()
    raise RuntimeError("the app did not answer within 300 s")


def soak_sessions(server: subprocess.Popen, url: str, calls: int) -> list[tuple[int, float]]:
    from gradio_client import Client, handle_file

    rows = [(0, rss_mb(server.pid))]
    print(f"{'/swap calls':>12} | server RSS (MB)")
    print(f"{0:>12} | {rows[-1][1]:8.0f}")
    every = max(1, calls // 8)
    for i in range(1, calls + 1):
        client = Client(url, verbose=False, analytics_enabled=False,
                        httpx_kwargs={"timeout": 300})
        client.predict(handle_file(str(CLIP_A)), handle_file(str(CLIP_B)), ["z_av"], True,
                       api_name="/swap")
        client.close()
        if i % every == 0 or i == calls:
            rows.append((i, rss_mb(server.pid)))
            print(f"{i:>12} | {rows[-1][1]:8.0f}", flush=True)
    return rows


def soak_uploads(url: str, cache: Path, uploads: int, upload_mb: float, upload_every: float,
                 settle_s: float) -> list[tuple[int, float]]:
    import httpx

    body = CLIP_A.read_bytes()
    pad = max(0, int(upload_mb * 2**20) - len(body))
    rows = [(0, folder_mb(cache))]
    print(f"\n{'uploads':>12} | cache folder (MB)")
    print(f"{0:>12} | {rows[-1][1]:8.1f}")
    every = max(1, uploads // 10)
    start = time.perf_counter()
    with httpx.Client(timeout=60) as http:
        for i in range(1, uploads + 1):
            data = body + os.urandom(pad)  # distinct bytes: Gradio stores each upload anew
            answer = http.post(f"{url}gradio_api/upload",
                               files={"files": (f"clip{i}.mp4", data, "video/mp4")})
            answer.raise_for_status()
            time.sleep(upload_every)
            if i % every == 0 or i == uploads:
                rows.append((i, folder_mb(cache)))
                print(f"{i:>12} | {rows[-1][1]:8.1f}", flush=True)
    print(f"({uploads} uploads in {time.perf_counter() - start:.1f} s)")
    time.sleep(settle_s)
    rows.append((uploads, folder_mb(cache)))
    print(f"{f'+{settle_s:g} s':>12} | {rows[-1][1]:8.1f}")
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    parser = argparse.ArgumentParser(prog="python -m train.benchmark_soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle folder or Hub id (default: $MDVAE_BUNDLE, "
                                         "then checkpoints/, else random weights)")
    parser.add_argument("--calls", type=int, default=200, help="/swap calls, one session each")
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--upload-mb", type=float, default=1.0, help="size of each upload")
    parser.add_argument("--upload-every", type=float, default=0.1,
                        help="seconds between uploads")
    parser.add_argument("--disk-mb", type=float, default=20.0,
                        help="the server's MDVAE_DISK_MB (small, so 100 uploads reach it)")
    args = parser.parse_args(argv)
    import app

    with tempfile.TemporaryDirectory(prefix="mdvae-soak-") as folder:
        folder = Path(folder)
        cache, tmp = folder / "gradio", folder / "tmp"
        cache.mkdir()
        tmp.mkdir()
        bundle = args.bundle or os.environ.get("MDVAE_BUNDLE")
        if bundle is None and not (ROOT / "checkpoints" / "config.json").is_file():
            bundle = str(random_bundle(folder / "random"))
        bundle = bundle or str(ROOT / "checkpoints")
        server, url = start_server(bundle, cache, tmp, args.disk_mb)
        print(f"app.py on {url} (bundle {bundle}); sessions kept: {app.MAX_SESSIONS}, "
              f"state time to live {app.SESSION_TTL_S:g} s; cache limit {args.disk_mb:g} MB")
        try:
            rows = {"rss_mb": soak_sessions(server, url, args.calls),
                    "cache_mb": soak_uploads(url, cache, args.uploads, args.upload_mb,
                                             args.upload_every, 2 * app.PRUNE_EVERY_S + 1)}
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
        left = [p.name for p in (*cache.glob("mdvae-app-*"), *tmp.glob("mdvae-*"))]
        print(f"\nafter SIGTERM: exit status {code}, temporary folders left: {left or 'none'}")
    return rows


if __name__ == "__main__":
    main()
