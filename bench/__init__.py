"""`make bench`: the performance claims of KITTY Images, measured side by side in one run as ratios,
printed as a table (measurement | value | goal | met?) and saved as JSON under `bench/results/`."""
