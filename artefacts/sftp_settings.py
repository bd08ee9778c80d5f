"""SSH transport settings of artefact transfers, shared by the server and the puller (no asyncssh import)."""

from __future__ import annotations

# Transport tuning, measured here with asyncssh's own cipher objects (`cryptography` backend, AES-NI),
# encrypting 256 KiB packets: aes128-gcm@openssh.com ~9,900 MiB/s, chacha20-poly1305@openssh.com (the
# asyncssh default) ~1,900 MiB/s, aes128-ctr + hmac-sha2-256-etm ~1,200 MiB/s. GCM first; the others only
# as fallbacks for foreign peers.
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes128-ctr"]
COMPRESSION_ALGS = ["none"]  # artefacts are often compressed already; zlib costs far more CPU than it saves
# A big window keeps read replies flowing without waiting for window adjusts. The channel packet size
# (what the *receiver* announces, so the Puller's setting decides downloads) is a sweet spot, measured on
# loopback: asyncssh reassembles an SSH packet from 256 KiB socket reads by concatenation, so multi-MiB
# packets cost quadratic copying (4 MiB: ~300 MiB/s), while small ones cost per-packet Python overhead
# (32 KiB, the default, and 64 KiB take visibly more CPU). 256 KiB: lowest CPU, ~550 MiB/s.
WINDOW = 64 * 1024 * 1024
MAX_PKTSIZE = 256 * 1024
LOGIN_TIMEOUT = 30.0
