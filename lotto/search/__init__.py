"""Hardware-aware architecture search (MnasNet, Tan et al. 2019) for `lotto search`.

`reward` holds the objective, `controllers` the samplers that propose networks (PPO / REINFORCE
over an LSTM policy, regularised evolution, random, optuna TPE / NSGA-II), `evaluate` a sample's
proxy training (the task of `lotto.proxy`, which netadapt trains with too) and the cross-run
cache. Latency: `lotto.latency.pricer`. The run loop is `lotto.experiments.search`.
"""
