"""SGD, Adam and AdamW (update loop in C++) against the NumPy formulas in siglayer.reference
and against torch.optim: formulas, defaults, hyperparameters changed between steps, and
state saved through pickle or np.savez."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import siglayer
from conftest import DTYPES, EPS
from siglayer import _core, reference
from siglayer.nn import Parameter
from siglayer.optim import SGD, Adam, AdamW, flatten_state_dict, unflatten_state_dict

DTYPE_IDS = [np.dtype(d).name for d in DTYPES]
SHAPES = [(7, 5), (5,), (1,), (300, 300)]  # the last is past the OpenMP threshold


def make_params(rng, dtype, shapes=SHAPES):
    return [
        Parameter(f"p{i}", rng.standard_normal(s).astype(dtype), np.zeros(s, dtype))
        for i, s in enumerate(shapes)
    ]


def assert_close_after_steps(got, want, dtype, steps, what):
    """The core and the reference evaluate the same expression in the same precision; allow
    a few ulps per step of the values' magnitude (reordering by the compiler)."""
    eps = EPS[np.dtype(dtype)]
    scale = np.abs(want) + 1
    np.testing.assert_array_less(np.abs(got - want), 4 * steps * eps * scale + 1e-300, err_msg=what)


SGD_CONFIGS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "dampening": {"momentum": 0.8, "dampening": 0.3},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "weight_decay": {"momentum": 0.5, "weight_decay": 0.01},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", list(SGD_CONFIGS), ids=list(SGD_CONFIGS))
def test_sgd_matches_numpy_reference(rng, threads, dtype, config):
    opts = SGD_CONFIGS[config]
    params = make_params(rng, dtype)
    expected = [p.value.copy() for p in params]
    velocities = [np.zeros_like(v) for v in expected]
    opt = SGD(params, lr=0.05, **opts)
    for step in range(5):
        for p in params:
            p.grad[...] = rng.standard_normal(p.grad.shape)
        opt.step()
        for p, value, v in zip(params, expected, velocities, strict=True):
            reference.sgd_step(value, p.grad, v, lr=0.05, first_step=step == 0, **opts)
    for p, value in zip(params, expected, strict=True):
        assert_close_after_steps(p.value, value, dtype, 5, p.name)
    assert opt.steps == 5


ADAM_CONFIGS = {
    "default": {},
    "l2": {"weight_decay": 0.05},
    "adamw": {"weight_decay": 0.05, "decoupled_weight_decay": True},
    "betas": {"betas": (0.5, 0.9), "eps": 1e-3},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", list(ADAM_CONFIGS), ids=list(ADAM_CONFIGS))
def test_adam_matches_numpy_reference(rng, threads, dtype, config):
    opts = dict(ADAM_CONFIGS[config])
    betas = opts.pop("betas", (0.9, 0.999))
    params = make_params(rng, dtype)
    expected = [p.value.copy() for p in params]
    moments = [(np.zeros_like(v), np.zeros_like(v)) for v in expected]
    opt = Adam(params, lr=0.01, betas=betas, **opts)
    for step in range(1, 6):
        for p in params:
            p.grad[...] = rng.standard_normal(p.grad.shape)
        opt.step()
        for p, value, (m, v) in zip(params, expected, moments, strict=True):
            reference.adam_step(
                value, p.grad, m, v, step=step, lr=0.01, beta1=betas[0], beta2=betas[1], **opts
            )
    for p, value, (m, v), m_got, v_got in zip(
        params, expected, moments, opt.exp_avgs, opt.exp_avg_sqs, strict=True
    ):
        assert_close_after_steps(p.value, value, dtype, 5, p.name)
        assert_close_after_steps(m_got, m, dtype, 5, p.name + " exp_avg")
        assert_close_after_steps(v_got, v, dtype, 5, p.name + " exp_avg_sq")


def test_first_adam_step_by_hand():
    """Step 1 with bias correction: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)."""
    p = Parameter("p", np.array([1.0, -2.0, 0.0]), np.array([0.5, -3.0, 0.0]))
    Adam([p], lr=0.1, eps=1e-8).step()
    np.testing.assert_allclose(
        p.value, [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 3.0 / (3.0 + 1e-8), 0.0], rtol=1e-14
    )


def test_updates_are_bitwise_independent_of_threads(rng):
    """Elementwise updates: splitting a large array between threads changes no bit."""
    results = []
    before = siglayer.get_num_threads()
    try:
        for threads in (1, 2):
            siglayer.set_num_threads(threads)
            params = make_params(np.random.default_rng(1), np.float32, [(400, 400)])
            params[0].grad[...] = 0.1
            opt = Adam(params, lr=0.01)
            for _ in range(3):
                opt.step()
            results.append(params[0].value.copy())
    finally:
        siglayer.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


def test_optimizer_trains_a_network(rng):
    net = siglayer.Sequential(
        siglayer.SigmoidLayer(8, 6, seed=0), siglayer.SigmoidLayer(6, 2, seed=1)
    )
    x = rng.random((32, 8), dtype=np.float32)
    y = np.stack([x[:, 0] > 0.5, x[:, 1] > x[:, 2]], axis=1).astype(np.float32)
    loss_fn = siglayer.losses.BCELoss()
    opt = Adam(net.parameters(), lr=0.05)
    first = None
    for _ in range(200):
        loss = loss_fn(net(x), y)
        first = loss if first is None else first
        net.backward_from_preactivation(loss_fn.backward())
        opt.step()
    assert loss < 0.5 * first


# ---------------------------------------------------------------- torch.optim


def torch_twins(rng, dtype, shapes=((6, 4), (4,))):
    """The same random parameters as siglayer Parameters and as torch.nn.Parameters."""
    torch = pytest.importorskip("torch")
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [Parameter(f"p{i}", v.copy(), np.zeros_like(v)) for i, v in enumerate(values)]
    tparams = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    return params, tparams


def step_both(rng, opt, topt, params, tparams):
    """One step of each optimizer on the same random gradients."""
    torch = pytest.importorskip("torch")
    for p, tp in zip(params, tparams, strict=True):
        g = rng.standard_normal(p.grad.shape).astype(p.grad.dtype)
        p.grad[...] = g
        tp.grad = torch.from_numpy(g.copy())
    opt.step()
    topt.step()


def assert_close_to_torch(params, tparams, dtype):
    """torch forms the same quantities with other roundings (lerp for the first moment,
    addcmul for the second): they agree to a few ulps per step of the values; 64 ulps of
    the largest value covers the runs here (at most 12 steps)."""
    eps = EPS[np.dtype(dtype)]
    for p, tp in zip(params, tparams, strict=True):
        want = tp.detach().numpy()
        np.testing.assert_allclose(
            p.value, want, rtol=0, atol=64 * eps * (np.abs(want).max() + 1), err_msg=p.name
        )


@pytest.mark.parametrize(
    ("ours", "theirs", "opts"),
    [
        pytest.param(SGD, "SGD", {"lr": 0.1}, id="sgd"),
        pytest.param(
            SGD,
            "SGD",
            {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01},
            id="sgd-momentum-dampening-wd",
        ),
        pytest.param(SGD, "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, id="sgd-nesterov"),
        pytest.param(Adam, "Adam", {"lr": 0.01}, id="adam"),
        pytest.param(
            Adam, "Adam", {"lr": 0.01, "weight_decay": 0.1, "betas": (0.8, 0.99)}, id="adam-l2"
        ),
        pytest.param(
            Adam,
            "Adam",
            {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
            id="adam-decoupled",
        ),
        pytest.param(AdamW, "AdamW", {"lr": 0.01, "weight_decay": 0.1}, id="adamw"),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_torch_optim(rng, dtype, ours, theirs, opts):
    torch = pytest.importorskip("torch")
    params, tparams = torch_twins(rng, dtype)
    opt = ours(params, **opts)
    topt = getattr(torch.optim, theirs)(tparams, **opts)
    for _ in range(6):
        step_both(rng, opt, topt, params, tparams)
    assert_close_to_torch(params, tparams, dtype)


DEFAULT_CASES = {
    "sgd": (SGD, "SGD", {}),
    "adam": (Adam, "Adam", {}),
    "adam-decoupled": (Adam, "Adam", {"decoupled_weight_decay": True}),
    "adamw": (AdamW, "AdamW", {}),
}


@pytest.mark.parametrize("case", list(DEFAULT_CASES))
def test_defaults_are_torchs(rng, case):
    """Built with nothing but the parameters (and the flag under test), each optimizer has
    the hyperparameters of its torch.optim counterpart (SGD's lr=1e-3, AdamW's
    weight_decay=1e-2, torch.optim.Adam's 0 even when decoupled) and takes the same
    steps."""
    torch = pytest.importorskip("torch")
    ours, theirs, flags = DEFAULT_CASES[case]
    params, tparams = torch_twins(rng, np.float64)
    opt = ours(params, **flags)
    topt = getattr(torch.optim, theirs)(tparams, **flags)
    group = topt.param_groups[0]
    for name in opt._hyper_names:
        assert getattr(opt, name) == group[name], name
    for _ in range(6):
        step_both(rng, opt, topt, params, tparams)
    assert_close_to_torch(params, tparams, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sgd_hyperparameters_changed_between_steps_match_torch(rng, dtype):
    """Momentum switched on mid-run starts its buffer at g (torch's momentum_buffer is
    created then); switched off, the buffer is kept, and switched on again continues from
    it, as in torch. The other hyperparameters change between steps too."""
    torch = pytest.importorskip("torch")
    params, tparams = torch_twins(rng, dtype)
    opt = SGD(params, lr=0.1)
    topt = torch.optim.SGD(tparams, lr=0.1)
    schedule = {
        2: {"momentum": 0.9},
        4: {"dampening": 0.3, "weight_decay": 0.01},
        6: {"momentum": 0.0},
        8: {"momentum": 0.5, "dampening": 0.0},
        9: {"nesterov": True, "lr": 0.05},
    }
    for step in range(12):
        for name, value in schedule.get(step, {}).items():
            setattr(opt, name, value)
            topt.param_groups[0][name] = value
        step_both(rng, opt, topt, params, tparams)
        if step == 1:
            assert opt.velocities == [None, None]  # no momentum yet: no buffers
    assert_close_to_torch(params, tparams, dtype)
    for velocity, tp in zip(opt.velocities, tparams, strict=True):
        want = topt.state[tp]["momentum_buffer"].numpy()
        np.testing.assert_allclose(
            velocity, want, rtol=0, atol=64 * EPS[np.dtype(dtype)] * (np.abs(want).max() + 1)
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_adam_hyperparameters_changed_between_steps_match_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    params, tparams = torch_twins(rng, dtype)
    opt = Adam(params, lr=0.01)
    topt = torch.optim.Adam(tparams, lr=0.01)
    schedule = {
        2: {"eps": 1e-3, "betas": (0.8, 0.99)},
        4: {"weight_decay": 0.1},
        6: {"decoupled_weight_decay": True, "lr": 0.02},
        8: {"betas": (0.5, 0.9), "weight_decay": 0.0},
    }
    for step in range(10):
        for name, value in schedule.get(step, {}).items():
            setattr(opt, name, value)
            topt.param_groups[0][name] = value
        step_both(rng, opt, topt, params, tparams)
    assert_close_to_torch(params, tparams, dtype)


# ---------------------------------------------------------------- errors


def test_hyperparameter_errors():
    p = [Parameter("p", np.zeros(3), np.zeros(3))]
    for bad, match in [
        ({"lr": -1.0}, "lr must be finite and >= 0"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"lr": 0.1, "momentum": -0.5}, "momentum must be"),
        ({"lr": 0.1, "nesterov": True}, "nesterov momentum needs momentum > 0"),
        ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "dampening == 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            SGD(p, **bad)
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD(p, lr="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"betas\[1\] must be finite and in \[0.0, 1.0\)"):
        Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps must be"):
        Adam(p, eps=-1e-8)
    opt = Adam(p, lr=0.1)
    opt.lr = 0.5
    assert opt.lr == 0.5
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = float("inf")


NESTEROV = {"momentum": 0.9, "nesterov": True}
SETTER_CASES = [
    # (optimizer, constructor options, hyperparameter, value, error, start of the message)
    (SGD, {}, "lr", "0.1", TypeError, "lr must be a number, got '0.1' (str)"),
    (SGD, {}, "momentum", -0.9, ValueError, "momentum must be finite and >= 0.0, got -0.9"),
    (SGD, {}, "dampening", float("nan"), ValueError,
     "dampening must be finite and >= 0.0, got nan"),
    (SGD, {}, "weight_decay", float("inf"), ValueError, "weight_decay must be finite and >= 0.0"),
    (SGD, {}, "nesterov", 1, TypeError, "nesterov must be a bool, got 1 (int)"),
    (SGD, {}, "nesterov", True, ValueError,
     "nesterov momentum needs momentum > 0 and dampening == 0, got momentum=0.0"),
    (SGD, NESTEROV, "momentum", 0.0, ValueError, "nesterov momentum needs momentum > 0"),
    (SGD, NESTEROV, "dampening", 0.1, ValueError, "nesterov momentum needs momentum > 0"),
    (Adam, {}, "eps", -1, ValueError, "eps must be finite and >= 0.0, got -1"),
    (Adam, {}, "betas", (0.9, 1.0), ValueError,
     "betas[1] must be finite and in [0.0, 1.0), got 1.0"),
    (Adam, {}, "betas", (-0.1, 0.9), ValueError,
     "betas[0] must be finite and in [0.0, 1.0), got -0.1"),
    (Adam, {}, "betas", 0.9, TypeError, "betas must be a pair of floats, got 0.9"),
    (Adam, {}, "betas", ("0.9", 0.99), TypeError, "betas[0] must be a number, got '0.9'"),
    (Adam, {}, "weight_decay", -0.01, ValueError,
     "weight_decay must be finite and >= 0.0, got -0.01"),
    (Adam, {}, "decoupled_weight_decay", "yes", TypeError,
     "decoupled_weight_decay must be a bool, got 'yes'"),
    (AdamW, {}, "decoupled_weight_decay", False, ValueError, "AdamW always decouples"),
    (AdamW, {}, "eps", float("-inf"), ValueError, "eps must be finite and >= 0.0, got -inf"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "opts", "name", "value", "error", "match"),
    SETTER_CASES,
    ids=[f"{c[0].__name__}-{c[2]}-{c[3]!r}" for c in SETTER_CASES],
)
def test_hyperparameters_assigned_later_are_checked_as_in_the_constructor(
    kind, opts, name, value, error, match
):
    """opt.eps = -1 used to be taken (and made the parameters -inf): every hyperparameter
    is checked on assignment, by the constructor's rules, and a refused one changes
    nothing, so the next step is the step the old values give."""
    values = np.array([1.0, -2.0, 0.5])
    p = Parameter("p", values.copy(), np.array([0.3, -0.1, 0.2]))
    opt = kind([p], **opts)
    before = opt.state_dict()["hyper"]
    with pytest.raises(error, match=re.escape(match)):
        setattr(opt, name, value)
    assert opt.state_dict()["hyper"] == before
    if name in inspect.signature(kind).parameters:  # AdamW has no decoupled_weight_decay
        with pytest.raises(error, match=re.escape(match)):
            kind([Parameter("q", values.copy(), np.zeros(3))], **{**opts, name: value})
    reference_p = Parameter("r", values.copy(), p.grad.copy())
    kind([reference_p], **opts).step()
    opt.step()
    np.testing.assert_array_equal(p.value, reference_p.value)
    assert np.isfinite(p.value).all()


def test_parameter_errors():
    net = siglayer.Sequential(siglayer.SigmoidLayer(3, 2, seed=0))
    with pytest.raises(TypeError, match=r"pass sequential.parameters\(\)"):
        SGD(net, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] must be a siglayer.Parameter"):
        SGD([(np.zeros(3), np.zeros(3))], lr=0.1)  # type: ignore[list-item]
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(3, 2)
    with pytest.raises(
        TypeError, match=r"params\[0\] is a torch\.nn\.parameter\.Parameter.*torch\.optim"
    ):
        Adam(module.parameters(), lr=0.1)  # type: ignore[arg-type]
    read_only = np.zeros(3)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="p: value is read-only"):
        SGD([Parameter("p", read_only, np.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="p: value must be C-contiguous"):
        SGD([Parameter("p", np.zeros((3, 4))[:, ::2], np.zeros((3, 2)))], lr=0.1)
    with pytest.raises(ValueError, match=r"grad is float64 \(4,\) but value is float64 \(3,\)"):
        SGD([Parameter("p", np.zeros(3), np.zeros(4))], lr=0.1)
    with pytest.raises(TypeError, match=r"grad is float32 \(3,\) but value is float64 \(3,\)"):
        SGD([Parameter("p", np.zeros(3), np.zeros(3, np.float32))], lr=0.1)
    with pytest.raises(TypeError, match="value has dtype int64"):
        SGD([Parameter("p", np.zeros(3, np.int64), np.zeros(3, np.int64))], lr=0.1)
    shared = np.zeros(6)
    with pytest.raises(ValueError, match=r"parameters 0 \(a\) and 1 \(b\) share memory"):
        SGD(
            [Parameter("a", shared[:4], np.zeros(4)), Parameter("b", shared[3:], np.zeros(3))],
            lr=0.1,
        )
    with pytest.raises(ValueError, match="value and grad share memory"):
        SGD([Parameter("p", shared, shared)], lr=0.1)
    # One parameter's grad over another's value: the result depended on their order.
    a, b = np.zeros(4), np.ones(4)
    for params in ([Parameter("a", a, b), Parameter("b", b, np.ones(4))],
                   [Parameter("b", b, np.ones(4)), Parameter("a", a, b)]):  # fmt: skip
        with pytest.raises(ValueError, match="a's grad shares memory with b's value"):
            SGD(params, lr=0.1)


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_a_misspelt_or_foreign_setting_is_refused(rng, cls):
    """opt.weight_decy = 0.1 was kept and never read (a review): a new attribute whose
    name is close to a hyperparameter's (in any case: LR), an alias (learning_rate,
    epsilon, wd, beta1), another optimizer's hyperparameter (Adam's momentum), or one of
    torch.optim's options that siglayer lacks (amsgrad, maximize: a review, helper-88,
    found them kept and never read) is an AttributeError naming the settings; nothing
    changes, and the steps match an optimizer that never saw the attempt. Other new names
    stay the caller's own."""

    def make():
        p = Parameter("w", np.ones(3), np.full(3, 0.5))
        return p, cls([p], lr=0.1)

    p, opt = make()
    q, twin = make()
    foreign = "momentum" if cls is not SGD else "betas"
    for name, message in (
        ("weight_decy", r"no setting 'weight_decy': did you mean 'weight_decay'\?"),
        ("learning_rate", r"did you mean 'lr'\?"),
        (foreign, rf"no setting '{foreign}'\. Its settings are lr, "),
        ("LR", r"no setting 'LR': did you mean 'lr'\?"),
        ("wd", r"no setting 'wd': did you mean 'weight_decay'\?"),
        ("amsgrad", r"no setting 'amsgrad': an option of torch\.optim's that siglayer\.optim "),
        ("maximize", r"no setting 'maximize': an option of torch\.optim's"),
        *(
            (("epsilon", r"did you mean 'eps'\?"), ("beta1", r"did you mean 'betas'\?"))
            if cls is not SGD
            else (("epsilon", r"no setting 'epsilon'\. Its"), ("beta2", r"no setting 'beta2'\."))
        ),
    ):
        with pytest.raises(AttributeError, match=message):
            setattr(opt, name, 0.9)
        assert name not in vars(opt)
    opt.my_note = "kept"  # the caller's own attribute
    opt.weight_decay = 0.25  # the real one
    twin.weight_decay = 0.25
    for _ in range(3):
        opt.step()
        twin.step()
    np.testing.assert_array_equal(p.value, q.value)
    assert opt.my_note == "kept" and opt.steps == 3


def test_hyperparameters_as_numpy_values_are_taken_as_torch_takes_them():
    """A 0-d array for a number and a 1-d pair for betas are the values they hold (torch
    takes them; the constructor had refused what load_state_dict took); an int beyond
    float's range is a ValueError, not an OverflowError."""
    p = [Parameter("p", np.zeros(3), np.ones(3))]
    opt = SGD(p, lr=np.array(0.1), momentum=np.float32(0.5))
    assert (opt.lr, opt.momentum) == (0.1, 0.5) and type(opt.lr) is float
    opt.lr = np.array(0.25)
    assert opt.lr == 0.25
    adam = Adam(p, betas=np.array([0.8, 0.9]))
    assert adam.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match=r"lr must be finite and >= 0\.0, got 1000"):
        SGD(p, lr=10**400)
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD(p, lr=np.array([0.1]))
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        opt.nesterov = np.array(1.0)  # type: ignore[assignment]


def misaligned(count: int) -> np.ndarray:
    """float64 ones, C-contiguous and writeable, starting one byte off alignment."""
    a = np.frombuffer(bytearray(8 * count + 1), np.float64, count=count, offset=1)
    a[...] = 1.0
    assert not a.flags.aligned and a.flags.c_contiguous and a.flags.writeable
    return a


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda a: a.update(grads=a["grads"][:1]), ValueError, "grads has 1 entries, expected 2"),
        (
            lambda a: a["grads"].__setitem__(1, np.zeros(4, np.float32)),
            TypeError,
            r"grads\[1\] has dtype float32, expected float64",
        ),
        (
            lambda a: a["grads"].__setitem__(1, np.zeros(5)),
            ValueError,
            r"grads\[1\] has shape \(5,\), expected \(4,\)",
        ),
        (
            lambda a: a["velocities"].__setitem__(0, a["params"][0]),
            ValueError,
            r"params\[0\] overlaps velocities\[0\]",
        ),
        (
            lambda a: a["velocities"].__setitem__(0, None),
            ValueError,
            r"velocities\[0\] is None but momentum",
        ),
        (
            lambda a: a["params"].__setitem__(1, "x"),
            TypeError,
            r"params\[1\] must be a numpy.ndarray, got str",
        ),
        (
            lambda a: a["params"].__setitem__(1, np.zeros(8)[::2]),
            ValueError,
            r"params\[1\] must be C-contiguous",
        ),
        (lambda a: a.update(params=np.zeros(3)), TypeError, "params must be a list"),
        (
            # A gradient laid out like its parameter but strided: named as strided (it was
            # reported as a dtype mismatch, "float64, expected float64").
            lambda a: a["grads"].__setitem__(1, np.zeros(8)[::2]),
            ValueError,
            r"grads\[1\] must be C-contiguous",
        ),
        (
            lambda a: a["params"].__setitem__(1, misaligned(4)),
            ValueError,
            r"params\[1\] is not aligned to its item size .* the update is made in place",
        ),
        (
            lambda a: a["grads"].__setitem__(0, misaligned(3)),
            ValueError,
            r"grads\[0\] is not aligned",
        ),
        (
            lambda a: a["velocities"].__setitem__(1, misaligned(4)),
            ValueError,
            r"velocities\[1\] is not aligned",
        ),
        (
            lambda a: a["params"].__setitem__(1, np.ones(4, np.float16)),
            TypeError,
            r"params\[1\] has dtype float16",
        ),
    ],
    ids=[
        "length",
        "dtype",
        "shape",
        "overlap",
        "missing-state",
        "not-array",
        "strided",
        "not-list",
        "strided-grad",
        "misaligned-param",
        "misaligned-grad",
        "misaligned-state",
        "float16",
    ],
)
def test_core_entry_point_checks_every_array(mutate, error, match):
    """The binding validates each call (never a crash, nothing written on error)."""
    args = {
        "params": [np.ones(3), np.ones(4)],
        "grads": [np.ones(3), np.ones(4)],
        "velocities": [np.zeros(3), np.zeros(4)],
    }
    mutate(args)
    params = [a for a in args["params"] if isinstance(a, np.ndarray)]
    snapshot = [a.copy() for a in params]
    with pytest.raises(error, match=match):
        _core.sgd_step(
            args["params"], args["grads"], args["velocities"], 0.1, 0.9, 0.0, 0.0, False, False
        )
    for before, after in zip(snapshot, params, strict=True):
        np.testing.assert_array_equal(before, after)


def test_adam_core_rejects_bad_step():
    with pytest.raises(ValueError, match="step must be >= 1"):
        _core.adam_step(
            [np.ones(2)],
            [np.ones(2)],
            [np.zeros(2)],
            [np.zeros(2)],
            0.1,
            0.9,
            0.999,
            1e-8,
            0.0,
            False,
            0,
        )


# ---------------------------------------------------------------- resume, zero_grad, repr

RESUME_CONFIGS = {
    "sgd": (SGD, {"lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    "sgd-plain": (SGD, {"lr": 0.2}),
    "adam": (Adam, {"lr": 1e-2, "weight_decay": 1e-3}),
    "adam-decoupled": (
        Adam,
        {"lr": 1e-2, "betas": (0.8, 0.99), "decoupled_weight_decay": True},
    ),
    "adamw": (AdamW, {"lr": 1e-2, "betas": (0.8, 0.99)}),
}


def save_and_load_state(opt, new_opt, path, via):
    """opt's state_dict into new_opt through a file: pickled, or written by np.savez and
    read back by np.load (0-d arrays for every scalar, no pickling allowed)."""
    import pickle

    if via == "pickle":
        path.write_bytes(pickle.dumps(opt.state_dict()))
        new_opt.load_state_dict(pickle.loads(path.read_bytes()))
    else:
        with open(path, "wb") as f:
            np.savez(f, **flatten_state_dict(opt.state_dict()))
        with np.load(path, allow_pickle=False) as saved:
            assert saved["steps"].shape == () and saved["hyper/lr"].shape == ()
            new_opt.load_state_dict(unflatten_state_dict(saved))


@pytest.mark.parametrize("via", ["pickle", "npz"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", list(RESUME_CONFIGS))
def test_resumed_training_is_bitwise_uninterrupted_training(tmp_path, dtype, config, via):
    """Train 12 steps straight; or train 5, save the parameters (save_parameters) and the
    optimizer (state_dict, through pickle or np.savez), build everything anew, load, train
    7 more: bitwise the same weights and optimizer state."""
    kind, opts = RESUME_CONFIGS[config]
    data = np.random.default_rng(5)
    batches = [
        (data.random((16, 8)).astype(dtype), (data.random((16, 3)) > 0.5).astype(dtype))
        for _ in range(12)
    ]

    def fresh():
        net = siglayer.Sequential(
            siglayer.SigmoidLayer(8, 6, dtype=dtype, seed=0),
            siglayer.SigmoidLayer(6, 3, dtype=dtype, seed=1),
        )
        return net, kind(net.parameters(), **opts), siglayer.losses.BCELoss()

    def train(net, opt, loss_fn, steps):
        for x, y in steps:
            loss_fn(net(x), y)
            net.backward_from_preactivation(loss_fn.backward())
            opt.step()

    net, opt, loss_fn = fresh()
    train(net, opt, loss_fn, batches)

    net1, opt1, loss1 = fresh()
    train(net1, opt1, loss1, batches[:5])
    net1.save(tmp_path / "net.npz")
    net2, opt2, loss2 = fresh()
    opt2.lr = 123.0  # overwritten by the load
    net2.load(tmp_path / "net.npz")
    save_and_load_state(opt1, opt2, tmp_path / f"opt.{via}", via)
    del net1, opt1
    assert opt2.steps == 5 and opt2.lr == opts["lr"]
    assert type(opt2.steps) is int and type(opt2.lr) is float
    train(net2, opt2, loss2, batches[5:])

    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        np.testing.assert_array_equal(p.value, q.value, err_msg=p.name)
    want, got = opt.state_dict(), opt2.state_dict()
    assert got["steps"] == want["steps"] == 12 and got["hyper"] == want["hyper"]
    assert {k: type(v) for k, v in got["hyper"].items()} == {
        k: type(v) for k, v in want["hyper"].items()
    }
    for name, arrays in want["state"].items():
        for a, b in zip(arrays, got["state"][name], strict=True):
            assert (a is None and b is None) or np.array_equal(a, b)


def test_state_dict_is_a_copy_and_load_checks_first(rng):
    params = make_params(rng, np.float64, [(3, 2), (2,)])
    opt = Adam(params, lr=0.1)
    for p in params:
        p.grad[...] = 1.0
    opt.step()
    state = opt.state_dict()
    m = state["state"]["exp_avgs"][0].copy()
    opt.step()
    np.testing.assert_array_equal(state["state"]["exp_avgs"][0], m)  # not a live view

    other = Adam(make_params(rng, np.float64, [(3, 2), (2,)]), lr=0.5)
    snapshot = other.state_dict()
    with pytest.raises(TypeError, match="state is from SGD"):
        other.load_state_dict(SGD(make_params(rng, np.float64, [(3, 2), (2,)]), 0.1).state_dict())
    with pytest.raises(ValueError, match="this optimizer has"):
        other.load_state_dict(Adam(make_params(rng, np.float64, [(3, 3), (2,)])).state_dict())
    bad = opt.state_dict()
    bad["hyper"]["eps"] = -1.0
    with pytest.raises(ValueError, match="eps"):
        other.load_state_dict(bad)
    with pytest.raises(TypeError, match="state_dict"):
        other.load_state_dict([1, 2])  # type: ignore[arg-type]
    after = other.state_dict()  # every failed load changed nothing
    assert after["steps"] == snapshot["steps"] and after["hyper"] == snapshot["hyper"]


def test_load_takes_the_state_of_another_momentum_setting(rng):
    """Momentum can be switched on and off between steps, so a state with momentum loads
    into an optimizer without (and the reverse), as in torch: the velocities come with
    it. The hyperparameters are checked together, not one by one in some order (nesterov
    with momentum replaces momentum 0 without nesterov)."""
    source_params = make_params(rng, np.float64, [(3, 2)])
    source_params[0].grad[...] = 0.5
    source = SGD(source_params, 0.1, momentum=0.9, nesterov=True)
    source.step()
    target = SGD(make_params(rng, np.float64, [(3, 2)]), 0.1)
    target.load_state_dict(source.state_dict())
    assert (target.momentum, target.nesterov) == (0.9, True)
    np.testing.assert_array_equal(target.velocities[0], np.full((3, 2), 0.5))
    target.load_state_dict(SGD(make_params(rng, np.float64, [(3, 2)]), 0.2).state_dict())
    assert (target.lr, target.momentum, target.nesterov, target.velocities) == (
        0.2,
        0.0,
        False,
        [None],
    )
    bad = source.state_dict()
    bad["state"]["velocities"] = [np.zeros((3, 2), np.float32)]
    with pytest.raises(ValueError, match=r"must be a float64 array of shape \(3, 2\)"):
        target.load_state_dict(bad)
    bad["hyper"]["dampening"] = 0.5
    bad["state"] = source.state_dict()["state"]
    with pytest.raises(ValueError, match="nesterov momentum needs"):
        target.load_state_dict(bad)
    assert target.momentum == 0.0 and target.velocities == [None]


NUMPY_SCALAR_CASES = {
    # what np.savez / np.load give back for each value: NumPy scalars and 0-d arrays
    "numpy-scalars": (np.int64(3), np.float64(0.25), np.bool_(True), None),
    "0-d-arrays": (np.array(3), np.array(0.25), np.array(True), None),
    "steps-not-an-integer": (np.array(3.0), np.array(0.25), np.array(True), ValueError),
    "nesterov-not-a-bool": (np.array(3), np.array(0.25), np.array(1), TypeError),
    "lr-not-a-number": (np.array(3), np.array("0.25"), np.array(True), TypeError),
}


@pytest.mark.parametrize("case", list(NUMPY_SCALAR_CASES))
def test_load_takes_numpy_scalars_of_the_right_kind(rng, case):
    """load_state_dict used to refuse np.int64 steps ('must be an int'); it takes a NumPy
    scalar or 0-d array as the Python value of the same kind, and refuses another kind
    (a float step count, an integer flag) as before, changing nothing."""
    steps, lr, nesterov, error = NUMPY_SCALAR_CASES[case]
    opt = SGD(make_params(rng, np.float64, [(2,)]), 0.1, momentum=0.9)
    state = opt.state_dict()
    state.update(type=np.str_("SGD"), steps=steps)
    state["hyper"].update(lr=lr, nesterov=nesterov, momentum=np.float64(0.5))
    state["params"] = [(np.str_("p0"), np.array([2]), np.array("<f8"))]
    state["state"] = {"velocities": [np.ones(2)]}
    if error is not None:
        with pytest.raises(error):
            opt.load_state_dict(state)
        assert (opt.steps, opt.lr, opt.nesterov, opt.velocities) == (0, 0.1, False, [None])
        return
    opt.load_state_dict(state)
    assert (opt.steps, opt.lr, opt.momentum, opt.nesterov) == (3, 0.25, 0.5, True)
    assert [type(v) for v in (opt.steps, opt.lr, opt.momentum, opt.nesterov)] == [
        int,
        float,
        float,
        bool,
    ]
    np.testing.assert_array_equal(opt.velocities[0], np.ones(2))


def test_zero_grad_and_repr(rng):
    params = make_params(rng, np.float32, [(3, 2), (2,)])
    for p in params:
        p.grad[...] = 7
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.zero_grad()
    assert all((p.grad == 0).all() for p in params)
    assert repr(opt) == (
        "SGD(2 parameters, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, "
        "nesterov=False, steps=0)"
    )
    assert repr(Adam(params)).startswith("Adam(2 parameters, lr=0.001, betas=(0.9, 0.999)")
    assert repr(siglayer.losses.BCELoss()) == "BCELoss(reduction='mean')"
    assert repr(siglayer.losses.MSELoss(reduction="sum", reuse_buffers=True)) == (
        "MSELoss(reduction='sum', reuse_buffers=True)"
    )


def test_a_failed_momentum_step_leaves_the_next_one_the_first():
    """A step the core refuses (a read-only parameter) changes nothing, the optimizer's
    state included: the next step is still the first (velocity = g), as torch's."""
    v, g = np.ones(3), np.ones(3)
    opt = siglayer.optim.SGD([Parameter("w", v, g)], lr=1.0, momentum=0.9, dampening=0.5)
    v.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step()
    assert opt.velocities == [None] and opt.steps == 0
    v.flags.writeable = True
    opt.step()
    np.testing.assert_array_equal(v, np.zeros(3))  # 1 - lr * g: the first step's velocity
    np.testing.assert_array_equal(opt.velocities[0], g)


@pytest.mark.parametrize("steps", [2**62, -1, 1.5, True])
def test_adam_step_counts_out_of_range_are_refused_by_name(steps):
    v, g = np.ones(3), np.ones(3)
    opt = siglayer.optim.Adam([Parameter("w", v, g)])
    opt.steps = steps
    with pytest.raises(ValueError, match="steps must be an int in"):
        opt.step()
    np.testing.assert_array_equal(v, np.ones(3))
    state = siglayer.optim.Adam([Parameter("w", v, g)]).state_dict()
    state["steps"] = steps
    with pytest.raises(ValueError, match=r"state\['steps'\] must be an int in"):
        siglayer.optim.Adam([Parameter("w", v, g)]).load_state_dict(state)
