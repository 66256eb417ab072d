"""The paper's Table 1 (PAPER.md 7.2): K and K - L_null on a holdout set, per data set, in the data set's unit."""

TABLE1 = {
    "swiss_roll": {"K": 2.35, "K_minus_L_null": 6.45},
    "heartbeat": {"K": -2.414, "K_minus_L_null": 12.024},
    "bark": {"K": -0.55, "K_minus_L_null": 1.5},
    "dead_leaves": {"K": 1.489, "K_minus_L_null": 3.536},
    "cifar10": {"K": 5.4, "K_minus_L_null": 11.5},
}
