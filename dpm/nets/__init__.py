"""Reverse-process networks: net(x_t [N, *D], t [N]) -> [N, n_outputs, *D], coefficients already read out at t."""
