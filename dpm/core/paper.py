"""The paper's Table 1 (docs/paper.md §7.2): K and K - L_null on a holdout set, per data set, in the data set's unit."""

TABLE1 = {
    "swiss_roll": {"K": 2.35, "K_minus_L_null": 6.45},
    "heartbeat": {"K": -2.414, "K_minus_L_null": 12.024},
    "bark": {"K": -0.55, "K_minus_L_null": 1.5},
    "dead_leaves": {"K": 1.489, "K_minus_L_null": 3.536},
    "cifar10": {"K": 5.4, "K_minus_L_null": 11.5},
}

# The paper's Table 2, MNIST (docs/paper.md §7.3): Parzen-window log-likelihood estimates in bits (v8; the earlier
# versions printed Goodfellow et al.'s numbers in nats), (mean, standard error).
TABLE2_MNIST_BITS = {
    "Stacked CAE": (174, 2.3),
    "DBN": (199, 2.9),
    "Deep GSN": (309, 1.6),
    "Diffusion (paper)": (317, 2.7),
    "Adversarial net": (325, 2.9),
    "Perfect model": (349, 3.3),
}
