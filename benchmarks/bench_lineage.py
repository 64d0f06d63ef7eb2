"""`slm lineage` and the Runs tab's family tree on a runs folder of N synthetic artifacts: time to draw and memory.

The folder is what a heavy week looks like: pretraining runs, LoRAs on each, each LoRA merged (HF export),
quantized and exported to GGUF, report cards on some; half the artifacts carry lineage records, half are older
folders whose lineage is inferred. Weights are small placeholder files (reading lineage never opens weights).

    python benchmarks/bench_lineage.py [--artifacts 500] [--server]

Figures (targets from issue 24): the CLI under 1 s, the page under 2 s. There is no local peer to run side by side
(the Hugging Face Hub's model tree is a web page of uploaded models); the figures stand alone.
--server also starts the real Studio and times the tree's endpoint through gradio_client, with the server's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def make_forest(root: Path, artifacts: int) -> int:
    """Families of 12 artifacts (a pretrain run, 2 LoRAs each merged, quantized and exported, 3 report cards)
    until `artifacts` exist; every other family has no records (inferred). Returns how many were made."""
    from slm_core.run import lineage

    made, family = 0, 0
    while made < artifacts:
        with_records = family % 2 == 0
        base = _run(root, f"pre-{family}", {"train": {"mode": "pretrain"}}, with_records, [], "pretrain")
        made += 1 + _card(base, 3.0 + family % 7)
        for k in range(2):
            lora = _run(root, f"lora-{family}-{k}", {"train": {"mode": "lora", "init_from": base.name}}, with_records,
                        [lineage.parent_ref(base.name, "adapter_of", near=base)], "lora")
            (lora / "checkpoints" / "best" / "adapter").mkdir()
            merged = _derived(lora / "export" / "hf", "export.json", {"source": lora.name, "format": "hf"},
                              with_records, lineage, "exported_from", lora.name)
            int8 = _derived(lora / "export" / "hf-int8", "quantization.json", {"source": str(merged), "method": "int8"},
                            with_records, lineage, "quantized_from", str(merged))
            _derived(lora / "export" / "hf-int8-gguf-f16", "export.json",
                     {"source": str(int8), "format": "gguf", "gguf_type": "f16"}, with_records, lineage,
                     "exported_from", str(int8))
            made += 4 + (_card(int8, 3.2 + k) if k == 0 else 0)
        family += 1
    return made


def _run(root: Path, name: str, config: dict, with_records: bool, parents: list, kind: str) -> Path:
    import yaml

    from slm_core.run import lineage

    folder = root / name
    (folder / "checkpoints" / "best").mkdir(parents=True)
    (folder / "checkpoints" / "best" / "model.safetensors").write_bytes(b"\0" * 4096)
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(config, data={"source": "builtin"})))
    (folder / "status.json").write_text(json.dumps({"state": "finished", "best_val_loss": 2.5, "started_at": 1.0}))
    (folder / "data.json").write_text(json.dumps({"fingerprint": "f" * 20, "source": "builtin"}))
    if with_records:
        lineage.write_record(folder, kind, parents, data={"fingerprint": "f" * 20, "source": "builtin"},
                             tokenizer="t" * 16, command=f"slm train --name {name}")
    return folder


def _derived(folder: Path, meta_file: str, meta: dict, with_records: bool, lineage, relation: str, source: str):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 2048)
    (folder / meta_file).write_text(json.dumps(dict(meta, created_at=time.time())))
    if with_records:
        lineage.record_derived(folder, source, relation, near=folder, details={"format": meta.get("format")},
                               command="slm export ...")
    return folder


def _card(folder: Path, ppl: float) -> int:
    (folder / "evals").mkdir(exist_ok=True)
    (folder / "evals" / "report-1.json").write_text(json.dumps({"ppl_own": ppl, "tasks": {
        "slm_arithmetic": {"exact_match": 0.4}}}))
    return 1


def timed(fn, repeats: int = 3):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def cli_seconds(root: Path, *args: str) -> float:
    """Wall time of `slm lineage ...` as a person runs it (a fresh Python, imports included), best of 3."""
    def once():
        subprocess.run([sys.executable, "-m", "slm_core", "lineage", *args, "--runs-dir", str(root)], env=ENV,
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return timed(once)[0]


def in_process(root: Path) -> dict:
    from slm_core.run import lineage, lineage_tree
    from studio import lineage_view

    scan_s, graph = timed(lambda: lineage.scan(root))
    render_s, text = timed(lambda: lineage_tree.render(graph))
    focus = graph.find("lora-0-0")["id"]
    json_s, _ = timed(lambda: json.dumps(graph.to_json(focus), default=str))
    rss_before = psutil.Process().memory_info().rss
    draw_s, (fig, _, _) = timed(lambda: lineage_view.draw(root, "ppl", "lora-0-0"))
    tracemalloc.start()  # apart from the timing: tracing slows Python down several times
    lineage_view.draw(root, "ppl", "lora-0-0")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    payload = len(fig.to_json())
    return {"nodes": len(graph.nodes), "edges": sum(len(n["parents"]) for n in graph.nodes.values()),
            "scan_s": scan_s, "render_s": render_s, "json_s": json_s, "lines": text.count("\n") + 1,
            "draw_s": draw_s, "draw_peak_mb": peak / 2**20, "figure_json_kb": payload / 1024,
            "rss_mb": psutil.Process().memory_info().rss / 2**20, "rss_growth_mb": (psutil.Process().memory_info().rss
                                                                                  - rss_before) / 2**20,
            "torch_loaded": "torch" in sys.modules}


def server_figures(root: Path) -> dict:
    """The real Studio: the tree endpoint's round trip through gradio_client, and the server's RSS."""
    from gradio_client import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = f"import sys; from studio.app import build_app, launch; launch(build_app(sys.argv[1]), port={port})"
    server = subprocess.Popen([sys.executable, "-c", code, str(root)], env=ENV, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = None
        for _ in range(240):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        idle = psutil.Process(server.pid).memory_info().rss
        round_trip, _ = timed(lambda: client.predict("kind", None, api_name="/lineage_tree"))  # the page's first draw
        shown = psutil.Process(server.pid).memory_info().rss
        return {"endpoint_s": round_trip, "server_rss_idle_mb": idle / 2**20, "server_rss_shown_mb": shown / 2**20}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=500)
    parser.add_argument("--server", action="store_true", help="also time the tree through the running Studio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        os.environ["SLM_RUNS_DIR"] = str(root)
        made = make_forest(root, args.artifacts)
        figures = in_process(root)
        print(f"{made} artifacts ({figures['nodes']} nodes, {figures['edges']} edges; half inferred, half recorded)")
        print(f"  scan (read every record / infer)   {figures['scan_s'] * 1000:8.1f} ms")
        print(f"  render the forest as text          {figures['render_s'] * 1000:8.1f} ms  ({figures['lines']} lines)")
        print(f"  one node's slice as JSON           {figures['json_s'] * 1000:8.1f} ms")
        print(f"  Runs tab draw() (scan + figure)    {figures['draw_s'] * 1000:8.1f} ms  peak {figures['draw_peak_mb']:.1f} MB"
              f" allocated, figure {figures['figure_json_kb']:.0f} KB of JSON to the page")
        print(f"  this process: RSS {figures['rss_mb']:.0f} MB, torch loaded: {figures['torch_loaded']}")
        for label, cli_args in (("slm runs --tree  (whole forest)", ()), ("slm lineage lora-0-0 --json", ("lora-0-0", "--json")),
                                ("slm lineage lora-0-0", ("lora-0-0",))):
            print(f"  {label:<34}{cli_seconds(root, *cli_args):8.2f} s  (fresh process, imports included; target < 1 s)")
        start_s = timed(lambda: subprocess.run([sys.executable, "-c", "import slm_core.cli"], env=ENV, cwd=REPO,
                                                check=True))[0]
        print(f"  of which starting `slm` (import slm_core.cli, torch included)  {start_s:.2f} s")
        if args.server:
            s = server_figures(root)
            print(f"  Studio /lineage_tree round trip    {s['endpoint_s']:8.2f} s  (target < 2 s for the page); server RSS "
                  f"{s['server_rss_idle_mb']:.0f} MB idle, {s['server_rss_shown_mb']:.0f} MB after drawing")


if __name__ == "__main__":
    main()
