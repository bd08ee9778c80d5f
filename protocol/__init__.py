"""The wire contract of ComputePods: message types, subjects, digests, error codes.

This package imports nothing of ours; chefs and the MajorDomo speak only through it.
"""

PROTOCOL_VERSION = 1
