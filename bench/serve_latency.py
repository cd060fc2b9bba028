"""What serving costs and what batching buys: `medtune serve` over HTTP on loopback against the bare model.

    python bench/serve_latency.py RUN_DIR            (or --model MODEL)   [--dtype fp32] [--clients 50]

1. Latency of one scored answer (no explanation) through HTTP, against one bare forward pass of the model on
   the same prompt in this process (the floor: tokenization, queueing, HTTP and JSON are the difference).
2. Throughput in questions/s of one client asking one question at a time, against `--clients` concurrent
   clients (dynamic batching puts their questions into shared forward passes).

The server is a real `medtune serve` process started here on 127.0.0.1 (same device and dtype as the bare
pass); the questions are the packaged MedMCQA-style demo set. Request counts are bounded by the flags.
Prints a markdown table (see bench/README-serve.md for the last figures).
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from importlib import resources

import httpx
import torch

from medtune.answer import Answerer
from medtune.data import example_from_input, load_examples
from medtune.tokenization import collate_prompts, encode_prompt, pad_token_id

# `medtune serve` through the same functions the CLI calls; works whether or not cli.py registers `serve`.
SERVER = ("import argparse, sys; from medtune import serve; parser = argparse.ArgumentParser(); "
          "serve.add_arguments(parser); sys.exit(serve.run(parser.parse_args()))")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a training run directory")
    parser.add_argument("--model", help="a base model instead of a run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32 (default auto)")
    parser.add_argument("--repeats", type=int, default=20, help="timed single requests and forward passes")
    parser.add_argument("--sequential", type=int, default=40, help="questions asked one at a time")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=2, help="questions each concurrent client asks")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate sequential and concurrent phases this many times (load swings hit both)")
    args = parser.parse_args()
    if bool(args.run_dir) == bool(args.model):
        parser.error("give either RUN_DIR or --model (exactly one)")
    return args


def demo_questions() -> list[dict]:
    path = resources.files("medtune").joinpath("demo_data/medmcqa_demo.jsonl")
    examples, _ = load_examples(str(path))
    return [{"question": e.question, "options": list(e.options), "explain": False} for e in examples]


def load_answerer(args) -> Answerer:
    if args.run_dir:
        return Answerer.from_run(args.run_dir, args.device, args.dtype)
    return Answerer.from_model(args.model, args.device, args.dtype)


def bare_forward(answerer: Answerer, question: dict, device: str):
    """A function doing one forward pass on exactly the prompt the server scores for `question`."""
    example = example_from_input(question["question"], question["options"])
    ids = collate_prompts([encode_prompt(answerer.tokenizer, answerer.template, example)],
                          pad_token_id(answerer.tokenizer))
    ids = {key: value.to(device) for key, value in ids.items()}

    @torch.no_grad()
    def forward() -> None:
        answerer.model(**ids, logits_to_keep=1, use_cache=False)

    return forward


def paired_latency_ms(forward, url: str, question: dict, repeats: int) -> tuple[list[float], list[float]]:
    """(bare pass ms, HTTP answer ms), taken in alternation so that a load swing on a shared machine hits
    both sides alike; 3 warm-up pairs are dropped."""
    bare, http = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(repeats + 3):
            started = time.perf_counter()
            forward()
            middle = time.perf_counter()
            client.post("/v1/answer", json=question).raise_for_status()
            if i >= 3:
                bare.append(1000 * (middle - started))
                http.append(1000 * (time.perf_counter() - middle))
    return bare, http


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = [args.run_dir] if args.run_dir else ["--model", args.model]
    command = [sys.executable, "-c", SERVER, *source, "--port", str(port), "--device", args.device,
               "--dtype", args.dtype]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    sys.exit("the server did not become healthy (run `medtune serve` by hand to see why)")


def sequential_rate(url: str, questions: list[dict], n: int) -> float:
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        for i in range(n):
            client.post("/v1/answer", json=questions[i % len(questions)]).raise_for_status()
        return n / (time.perf_counter() - started)


async def concurrent_rate(url: str, questions: list[dict], clients: int, per_client: int):
    """(questions/s, each request's latency in ms) for `clients` clients asking `per_client` questions each."""
    async def one_client(http: httpx.AsyncClient, k: int) -> list[float]:
        times = []
        for j in range(per_client):
            started = time.perf_counter()
            response = await http.post("/v1/answer", json=questions[(k * per_client + j) % len(questions)])
            response.raise_for_status()
            times.append(1000 * (time.perf_counter() - started))
        return times

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:  # waits are the point
        started = time.perf_counter()
        times = await asyncio.gather(*(one_client(http, k) for k in range(clients)))
        seconds = time.perf_counter() - started
    return clients * per_client / seconds, [t for client in times for t in client]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]  # other processes on the machine skew every figure: report them
    questions = demo_questions()
    answerer = load_answerer(args)
    process, url = start_server(args)
    try:
        bare, single = paired_latency_ms(bare_forward(answerer, questions[0], args.device), url, questions[0],
                                         args.repeats)
        sequential, concurrent, waits = 0.0, 0.0, []
        for _ in range(args.rounds):  # alternated for the same reason as the latency pairs
            sequential += sequential_rate(url, questions, args.sequential // args.rounds) / args.rounds
            rate, round_waits = asyncio.run(concurrent_rate(url, questions, args.clients,
                                                            args.per_client // args.rounds))
            concurrent, waits = concurrent + rate / args.rounds, waits + round_waits
    finally:
        process.terminate()
        process.wait(30)
    description = answerer.description
    print(f"\n{description['base_model']} ({'run ' + args.run_dir if args.run_dir else 'base model'}), "
          f"{args.device}, {description['dtype']}, torch threads {torch.get_num_threads()} of {os.cpu_count()} "
          f"CPUs, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after\n")
    print("| measure | value |\n| --- | --- |")
    print(f"| bare forward pass, one prompt (median of {args.repeats}) | {statistics.median(bare):.1f} ms |")
    print(f"| one scored answer over HTTP, no explanation (median of {args.repeats}) | "
          f"{statistics.median(single):.1f} ms (p90 {percentile(single, 90):.1f}) |")
    overhead = [h - b for h, b in zip(single, bare, strict=True)]
    print(f"| HTTP answer minus bare pass, per pair (median) | {statistics.median(overhead):.1f} ms |")
    print(f"| one client, one question at a time ({args.sequential} questions) | "
          f"{sequential:.2f} questions/s |")
    print(f"| {args.clients} concurrent clients ({args.clients * args.per_client} questions) | "
          f"{concurrent:.2f} questions/s (latency p50 {statistics.median(waits):.0f} ms, "
          f"p90 {percentile(waits, 90):.0f} ms) |")
    print(f"| throughput gained by batching | {concurrent / sequential:.1f}x |")


if __name__ == "__main__":
    main()
