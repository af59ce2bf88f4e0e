"""Custom policy hooks used by the tests (registered by dotted path)."""

from batches.policy import Continue, Done, Fail


def shorten_then_shout(item, trajectory):
    """First success: try again with max_tokens=1; second: finish with the text upper-cased."""
    last = trajectory[-1]
    if last["status"] != "succeeded":
        return None
    if len(trajectory) == 1:
        return Continue({"max_tokens": 1})
    return Done({"text": last["result"]["text"].upper(), "tries": len(trajectory)})


def give_up_on_429(item, trajectory):
    if trajectory[-1]["status_code"] == 429:
        return Fail("no patience for 429")
    return None


def always_raise(item, trajectory):
    """A broken hook: raises on every attempt."""
    raise RuntimeError("hook bug")


def circular_result(item, trajectory):
    """A result JSON cannot encode (it contains itself)."""
    result = {"text": "loop"}
    result["self"] = result
    return Done(result)
