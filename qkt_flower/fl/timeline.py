"""Where the train step's wall time went, from the nodes' own reports (one machine: comparable wall clocks)."""

from __future__ import annotations


def train_step_timeline(info: list[dict], train_started: float | None, train_seconds: float) -> dict:
    """Step 0 as the nodes measured it, and where the rest of the train step's wall time went.

    Samples pushed through and seconds inside the training loops; then, from the handlers' wall clocks
    (comparable on one machine: simulation), the wait for the first handler (process start-up), the seconds
    inside handlers, the gaps between one process's handlers, the tail after the last one.
    """
    out = {
        "clients": len(info),
        "samples": int(sum(i.get("train-samples", 0) for i in info)),
        "client_seconds": float(sum(i.get("train-seconds", 0.0) for i in info)),
    }
    spans = [(i["pid"], i["handler-start"], i["handler-end"]) for i in info if "handler-start" in i]
    if spans and train_started is not None:
        by_process: dict[int, list[tuple[float, float]]] = {}
        for pid, start, end in spans:
            by_process.setdefault(int(pid), []).append((float(start), float(end)))
        ordered = [sorted(s) for s in by_process.values()]
        gaps = [b[0] - a[1] for s in ordered for a, b in zip(s, s[1:], strict=False)]
        out.update({
            "processes": len(by_process),
            "first_handler_after_s": min(s for _, s, _ in spans) - train_started,
            "handler_seconds": float(sum(e - s for _, s, e in spans)),
            "between_handlers_s": float(sum(gaps)),
            "after_last_handler_s": train_started + train_seconds - max(e for *_, e in spans),
        })  # fmt: skip
    return out
