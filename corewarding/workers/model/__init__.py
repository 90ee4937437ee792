"""The model on this rank: loading and FSDP2 sharding it, full weights in and out (`sharding.py`),
the CPU workers' attention (`segment_attention.py`), padded, packed and shared-prefix inputs
(`packing.py`) and the forward that gives log-probs, entropy and self-certainty (`forward.py`)."""
