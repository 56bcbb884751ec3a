"""Which text batch size is fastest on this machine (a measurement, not a test).

    python benchmarks/text_batch_sizes.py [--device cpu] [--sizes 16,32,64,128,256,1000]

Encodes the 1000 ImageNet class prompts (the default template) through
``OpenClipTarget.encode_text`` (length-sorted batches, each cut after its longest prompt)
with open_clip ViT-B-32 at random init, once per batch size after one warm-up, and prints
the best of ``--repeats`` wall times per size. The defaults in
``sing_audit.text_batches`` quote its output.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="16,32,64,128,256,1000")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import torch
    from sing_audit.imagenet import imagenet_class_info
    from sing_audit.options import DEFAULT_TEMPLATES
    from sing_audit_open_clip.target import OpenClipTarget

    names = imagenet_class_info(1000)[1]
    prompts = [t.format(n) for n in names for t in DEFAULT_TEMPLATES]
    target = OpenClipTarget({"model": "ViT-B-32", "weights": "random"})
    target.load(args.device)
    target.encode_text(prompts[:64])  # warm-up
    out = {"device": args.device, "prompts": len(prompts), "threads": torch.get_num_threads(), "seconds": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        target.text_batch_size = size
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            target.encode_text(prompts)
            best = min(best, time.perf_counter() - start)
        out["seconds"][size] = round(best, 3)
        print(size, round(best, 3), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
