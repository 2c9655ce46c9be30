#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) baseline on the same GGUF with the same thread count.

Prints prefill tok/s, single-stream decode tok/s and 8 sequential-stream aggregate
(llama-cpp-python's high-level API serves one sequence at a time, so 8 "concurrent"
streams run back to back: aggregate == single stream).

usage: llamacpp.py MODEL.gguf THREADS [TOKENS]
"""
import sys
import time

from llama_cpp import Llama


def main():
    model, threads = sys.argv[1], int(sys.argv[2])
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False, seed=1)
    long = "The history of computing is long and full of surprising turns. " * 12
    prompt_ids = llm.tokenize(long.encode(), add_bos=False)
    # warm-up
    llm.create_completion("Hello", max_tokens=4)

    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt_ids)
    prefill = len(prompt_ids) / (time.perf_counter() - t)

    def stream(i):
        llm.reset()
        msgs = [{"role": "user", "content": f"Write a long story about dragon number {i}."}]
        t0, first, n = time.perf_counter(), None, 0
        for _ in llm.create_chat_completion(messages=msgs, max_tokens=tokens, temperature=0.8,
                                            top_p=0.95, seed=i, stream=True):
            n += 1
            if first is None:
                first = time.perf_counter()
        return n, t0, first, time.perf_counter()

    n, t0, first, end = stream(1)
    single = (n - 1) / (end - first)
    t = time.perf_counter()
    total = sum(stream(10 + i)[0] for i in range(8))
    agg = total / (time.perf_counter() - t)
    print(f"llama.cpp: threads {threads} | prefill {len(prompt_ids)} tok: {prefill:.0f} tok/s | "
          f"decode 1 stream: {single:.1f} tok/s | 8 streams (sequential): {agg:.1f} tok/s aggregate")


if __name__ == "__main__":
    main()
