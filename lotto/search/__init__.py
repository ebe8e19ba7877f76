"""Hardware-aware architecture search (MnasNet, Tan et al. 2019) for `lotto search`.

`reward` holds the objective, `controllers` the samplers that propose networks (PPO / REINFORCE
over an LSTM policy, regularised evolution, random, optuna TPE / NSGA-II), `evaluate` the proxy
training task and the cross-run cache. The run loop is `lotto.experiments.search`.
"""
