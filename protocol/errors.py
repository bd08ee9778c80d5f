"""Error codes carried in step results and micro-service error replies."""

from enum import StrEnum


class ErrorCode(StrEnum):
    OK = "ok"
    COMMAND_FAILED = "command_failed"          # the step's command exited non-zero
    OUTPUT_MISSING = "output_missing"          # the command succeeded but a declared output was not made
    INPUT_UNAVAILABLE = "input_unavailable"    # no owner could serve an input with the right bytes
    TOOL_MISSING = "tool_missing"              # the chef lacks a tool the step needs
    KIND_UNSUPPORTED = "kind_unsupported"      # the chef does not cook this kind
    BAD_REQUEST = "bad_request"                # the request could not be decoded or is invalid
    TIMEOUT = "timeout"                        # the command ran past its time limit
    INTERNAL = "internal"                      # a bug or an environment fault on the chef
