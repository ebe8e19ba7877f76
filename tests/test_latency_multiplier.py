from lotto.arch import preset, scale_width
from lotto.latency import predict
from lotto.latency.multiplier import multiplier_for


def _ms(spec) -> float:
    return float(predict(spec, "pixel1").ms)


def test_multiplier_is_the_largest_within_the_target_by_brute_force() -> None:
    seed = preset("mobilenet_v3_small")
    for target in (6.0, 9.5, 13.0):
        m = multiplier_for(seed, target, _ms, low=0.3, high=1.2, step=0.05)
        grid = [round(0.3 + 0.05 * k, 6) for k in range(19)]
        within = [g for g in grid if _ms(scale_width(seed, g)) <= target]
        assert m == max(within)
        assert _ms(scale_width(seed, m)) <= target


def test_unreachable_target_gives_the_lowest_multiplier() -> None:
    assert multiplier_for(preset("mobilenet_v3_small"), 0.01, _ms, low=0.25) == 0.25
