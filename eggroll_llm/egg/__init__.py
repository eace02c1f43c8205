"""EGG: the integer-only byte-level recurrent language model of the EGGROLL paper, pretrained by integer EGGROLL.

    eggroll-llm egg train --output_dir runs/egg --max_wall_s 1200

`intops` (integer kernels), `model` (parameters and the population forward), `qeggroll` (int8 noise, sign
fitness, thresholded update), `corpus` (text, split, baselines), `train` (the loop), `sample`. docs/egg.md.
"""
