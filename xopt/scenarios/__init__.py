"""Benchmark scenarios on the one timing harness (xopt.measure): `fixed_batch` (interleaved
rounds of every variant on a shape, and the bench record of a measurement), `loadgen` (MLPerf
LoadGen's single-stream, offline and server) and `lengths` (real length mixes for shapes)."""
