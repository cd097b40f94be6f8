"""``stream-clf drill``: a fleet of workers put through what production does to it (a rolling deploy,
a scale up and down) under a steady stream, and what subscribers saw: lost, repeated, out of order,
the longest pause and the latency while it happened."""
