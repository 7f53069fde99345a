"""Few-step students against their teacher: quality after 1, 2 and 4 steps, and what each student cost to train.

Two parts, the same students and the same code (diffkit.accel.distill, .consistency, .meanflow):

- toy: the teacher is the exact denoiser of the eight-Gaussians mixture on the linear path (diffkit.toy.OracleDenoiser),
  so the target distribution is known exactly. Students are residual MLPs; those that start from a teacher's weights
  start from a 1-rectified-flow MLP regressed onto the oracle's velocity ('base', its cost reported separately).
  Quality: sliced Wasserstein distance to fresh data at n = 10000, beside the data-vs-data floor at the same n.
- digits: the teacher is the shipped class-conditional UNet (diffkit.zoo.load_zoo('digits_unet_s'), linear path,
  velocity). Every student starts from its weights, iCT included (consistency training initialised from a diffusion
  model, as in ECT, Geng et al. 2024); MeanFlow adds a zero-initialised embedding of the jump length. Quality: Frechet distance of the shipped digits classifier's features
  (diffkit.classifier.digits_quality) over 1000 samples (labels 0..9 in turn) against the 359 held-out images,
  beside the floor of 1000 training images; the teacher at 50 steps of DPM-Solver++(2M) is the reference.

Students: 2-rectified flow (reflow on the teacher's pairs), InstaFlow (2-RF distilled to one step on the same pairs),
trajectory distillation (one denoiser per step count k whose k DDIM jumps regress onto the teacher's states on that
grid, from the same teacher runs; the row's cost is the three students together), progressive distillation (rounds halving the steps), consistency distillation, iCT
(consistency training) and MeanFlow distilled from the teacher's velocity. Multistep consistency sampling re-noises.
Training budgets are step counts (deterministic); wall and CPU time (this process, 1 thread) are reported for each
student, cumulative over rounds for progressive distillation, and the teacher runs that make pairs separately.

    python benchmarks/distill.py --part toy          # ~15 CPU-minutes
    python benchmarks/distill.py --part digits       # ~2 CPU-hours: run niced, 1 thread
    python benchmarks/distill.py --part digits --students insta,traj   # the regression students only: ~25 CPU-minutes
    python benchmarks/distill.py --quick             # small budgets, both parts (~5 CPU-minutes); --smoke: seconds (tests)
Ends with one line: RESULT toy_sw1_over_floor=... digits_fd1_over_teacher=... digits_fd4_over_teacher=... ...

Measured (2026-11-30, `OMP_NUM_THREADS=1 nice -n 10 python benchmarks/distill.py --quick`, 2 shared cores under load from
other jobs; 528 s wall, 359 s CPU): RESULT toy_sw1_over_floor=2.504 toy_sw_teacher_over_floor=0.832 toy_floor=0.0547
digits_fd1_over_teacher=3.652 digits_fd4_over_teacher=1.052 digits_fd_teacher=1.380 digits_fd_floor=2.365 mode=quick
(quick budgets: 300 toy steps, 10-60 digits steps, digits FD over n = 200).
Full toy part (2026-11-30, `OMP_NUM_THREADS=1 python benchmarks/distill.py --part toy`, 32 min wall, 27 CPU-min, partly
beside another job): one step SW 0.0450 (InstaFlow), 0.0448 (trajectory distillation), 0.0491 (2-RF), 0.0549
(progressive), 0.172 (CD), 0.233 (iCT), 0.395 (MeanFlow) against a data floor of 0.0547 and the 50-step teacher's 0.0455:
RESULT toy_sw1_over_floor=0.819 toy_sw_teacher_over_floor=0.832 toy_floor=0.0547.
Digits, regression students at full budgets (2026-12-01, `OMP_NUM_THREADS=1 nice -n 5 python benchmarks/distill.py --part digits
--students insta,traj`, 24 min wall beside other jobs): teacher 50 steps FD 0.774 (floor 0.703, n = 1000); one step 0.954
(InstaFlow, 310 CPU-s with its 2-RF), 0.981 (trajectory distillation); four steps 0.774 (trajectory distillation), 0.866
(2-RF); teacher pairs 121 CPU-s: RESULT digits_fd1_over_teacher=1.232 digits_fd4_over_teacher=1.000 digits_fd_teacher=0.774
digits_fd_floor=0.703 students=insta,traj. The other four (`--students pd,cd,ict,meanflow`, same day, 44 min wall): one / two /
four steps progressive 0.988 / 0.845 / 0.805 (980 CPU-s), consistency distillation 1.124 / 1.038 / 0.968 (442), iCT 1.310 /
1.067 / 1.040 (328), MeanFlow 19.9 / 4.19 / 1.70 (200 steps, 335 CPU-s: its jump embedding has not learned at this budget).
"""
import argparse, copy, math, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffkit.accel.consistency import ConsistencyLoss  # noqa: E402
from diffkit.accel.distill import (DDIMMap, distill_loss, pack, progressive_distillation, reflow_loss, teacher_pairs,  # noqa: E402
                                   trajectory_jumps)
from diffkit.accel.meanflow import MeanFlowMap, TwoTimeNet, meanflow_loss  # noqa: E402
from diffkit.denoiser import Denoiser  # noqa: E402
from diffkit.flow import fm_loss  # noqa: E402
from diffkit.metrics import sliced_wasserstein  # noqa: E402
from diffkit.models.mlp import TimeMLP  # noqa: E402
from diffkit.objectives import sample_t  # noqa: E402
from diffkit.samplers import sample_dpmpp_2m, sample_flow_map, uniform_grid  # noqa: E402
from diffkit.toy import OracleDenoiser, eight_gaussians  # noqa: E402
from diffkit.training import train  # noqa: E402

KS = (1, 2, 4)


class Clock:
    "Wall and CPU seconds of a block."
    def __enter__(self): self.w, self.c = time.time(), time.process_time(); return self
    def __exit__(self, *a): self.wall, self.cpu = time.time() - self.w, time.process_time() - self.c


class Setup:
    "What differs between the parts: teacher, base network, data, budgets, metric."
    def __init__(self, **kw): self.__dict__.update(kw)

    def fit(self, net, loss, steps, data=None, callbacks=(), lr=None, seed=0):
        torch.manual_seed(seed)
        return train(net.train().requires_grad_(True), loss, self.data if data is None else data, steps=steps, batch_size=self.batch_size, lr=lr or self.lr,
                     warmup=min(50, steps // 10), ema_decay=self.ema_decay, generator=torch.Generator().manual_seed(seed), callbacks=callbacks)[0]

    def base_copy(self): return copy.deepcopy(self.base_net)
    def denoiser(self, net): return Denoiser(net, self.path, self.target)


STUDENTS = ('rf2', 'insta', 'traj', 'pd', 'cd', 'ict', 'meanflow')


def students(S, log, which=STUDENTS):
    "Train the students named in `which` (InstaFlow needs 2-RF); return {name: dict(maps={k: flow map}, renoise=bool, steps=int, wall=, cpu=)} and the cost of the pairs."
    out = {}
    cost = {}
    if {'rf2', 'insta', 'traj'} & set(which):             # only these train on the teacher's runs
        with Clock() as c:                                # the teacher's runs: (x0, x1) pairs and the states on its grid
            states = teacher_pairs(S.teacher, S.noise, uniform_grid(S.teacher_steps), sampler=sample_dpmpp_2m,
                                   extra_args=S.noise_cond, batch_size=S.teacher_batch, trajectory=True)
        cost['pairs'] = dict(wall=c.wall, cpu=c.cpu, n=len(S.noise), nfe=S.teacher_steps)
        log(f"teacher pairs: {len(S.noise)} runs of {S.teacher_steps} DPM-Solver++(2M) steps, {c.wall:.0f} s wall, {c.cpu:.0f} s CPU")
        pairs, unpack = pack(x0=states[-1], x1=states[0], **S.noise_cond)

    def record(name, maps, c, steps, renoise=False):
        out[name] = dict(maps=maps, renoise=renoise, steps=steps, wall=c.wall, cpu=c.cpu)
        log(f"{name}: {steps} steps, {c.wall:.0f} s wall, {c.cpu:.0f} s CPU")

    cond = lambda f: {k: v for k, v in f.items() if k not in ('x0', 'x1', 'x', 'xs', 't', 's')}
    # 2-rectified flow, initialised from the base network
    if 'rf2' in which or 'insta' in which:
        with Clock() as c:
            rf2 = S.fit(S.base_copy(), lambda m, b, g: reflow_loss(m, S.path, **unpack(b), target=S.target, generator=g), S.steps, pairs)
        record('2-rectified flow', {k: DDIMMap(S.denoiser(rf2)) for k in KS}, c, S.steps)
    # InstaFlow: 2-RF distilled to one step on the same pairs
    if 'insta' in which:
        with Clock() as c:
            def insta_loss(m, b, g):
                f = unpack(b)
                return distill_loss(DDIMMap(S.denoiser(m)), f['x1'], f['x0'], **cond(f))
            insta = S.fit(copy.deepcopy(rf2), insta_loss, S.steps // 2, pairs)
        c.wall += out['2-rectified flow']['wall']; c.cpu += out['2-rectified flow']['cpu']
        record('InstaFlow (2-RF + 1-step)', {1: DDIMMap(S.denoiser(insta))}, c, S.steps + S.steps // 2)
    # trajectory distillation: per step count k, DDIM jumps of the k-grid regressed onto the teacher's states
    if 'traj' in which:
        with Clock() as c:
            maps = {}
            for k in KS:
                data_k, unpack_k = pack(**trajectory_jumps(states, k, **S.noise_cond))
                def traj_loss(m, b, g, unpack_k=unpack_k):
                    f = unpack_k(b)
                    return distill_loss(DDIMMap(S.denoiser(m)), f['x'], f['xs'], f['t'], f['s'], **cond(f))
                maps[k] = DDIMMap(S.denoiser(S.fit(S.base_copy(), traj_loss, S.steps, data_k)))
        record('trajectory distillation (k = 1, 2, 4)', maps, c, 3 * S.steps)
    # progressive distillation: rounds from the teacher's 2 * 64-step DDIM to one step, each round from the last weights
    if 'pd' in which:
        with Clock() as c:
            pd = progressive_distillation(S.teacher, S.data, steps=S.pd_start, init=S.base_net, target=S.target, unpack=S.unpack,
                                          train_steps=S.pd_round_steps, batch_size=S.batch_size, lr=S.lr, warmup=20,
                                          ema_decay=S.ema_decay, generator=torch.Generator().manual_seed(0))
        name = f'progressive ({S.pd_start} -> 1 steps)'
        record(name, {k: DDIMMap(pd[k]) for k in KS if k in pd}, c, S.pd_round_steps * int(math.log2(S.pd_start)))
        out[name]['per_k_cpu'] = {k: pd[k].train_info['cpu_s'] for k in KS if k in pd}
    # consistency distillation and training (iCT), multistep sampling re-noises
    for key, name, teacher, init in (('cd', 'consistency distillation', S.teacher, S.base_copy),
                                     ('ict', 'consistency training (iCT)', None, S.ict_init)):
        if key not in which: continue
        with Clock() as c:
            loss = ConsistencyLoss(S.path, S.target, teacher=teacher, s1=S.ct_s1, unpack=S.unpack)
            cm = S.fit(init(), loss, S.steps, callbacks=[loss])
        record(name, {k: DDIMMap(S.denoiser(cm)) for k in KS}, c, S.steps, renoise=True)
    # MeanFlow distilled from the teacher's velocity, initialised from the base network
    if 'meanflow' in which:
        with Clock() as c:
            def mf_loss(m, b, g):
                f = S.unpack(b); x0 = f.pop('x0')
                return meanflow_loss(m, x0, g, teacher=S.teacher, p_equal=0.25, **f)
            mf = S.fit(MeanFlowMap(TwoTimeNet(S.base_copy()), S.path, S.target), mf_loss, S.mf_steps)
        record('MeanFlow (distilled)', {k: mf for k in KS}, c, S.mf_steps)
    return out, cost


def evaluate(S, table, log):
    "Quality of every student after 1, 2, 4 steps from the same noise."
    res = {}
    for name, st in table.items():
        res[name] = {}
        for k, fm in st['maps'].items():
            with torch.no_grad():
                x = sample_flow_map(fm, S.eval_noise, uniform_grid(k), extra_args=S.eval_cond, renoise=st['renoise'],
                                    generator=torch.Generator().manual_seed(7))
            res[name][k] = S.metric(x)
        log(f"{name}: " + ', '.join(f'{k} steps {v:.4f}' for k, v in res[name].items()))
    return res


def print_table(title, teacher_q, floor, res, table, cost, extra=''):
    fmt = lambda q, k: f'{q[k]:9.4f}' if k in q else f'{"-":>9}'
    print(f"\n{title}")
    print(f"{'':44}{'1 step':>9}{'2 steps':>9}{'4 steps':>9}{'train steps':>12}{'wall s':>8}{'CPU s':>8}")
    print(f"{'teacher, 50 steps of DPM-Solver++(2M)':44}{teacher_q:9.4f}")
    for name, q in res.items():
        st = table[name]
        print(f"{name:44}" + ''.join(fmt(q, k) for k in KS) + f"{st['steps']:12d}{st['wall']:8.0f}{st['cpu']:8.0f}")
    print(f"{'data floor (data against data)':44}{floor:9.4f}")
    p = cost.get('pairs')
    if p: print(f"teacher runs shared by reflow / InstaFlow / trajectory distillation: {p['n']} x {p['nfe']} NFE, "
                f"{p['wall']:.0f} s wall, {p['cpu']:.0f} s CPU" + extra)
    elif extra: print(extra.lstrip('; '))


def toy_setup(mode):
    gm, path = eight_gaussians(), 'linear'
    oracle = OracleDenoiser(gm, path)
    width, depth, steps, n_pairs, n_eval = dict(smoke=(32, 1, 8, 256, 1000), quick=(128, 3, 300, 2000, 10_000), full=(256, 4, 4000, 50_000, 10_000))[mode]
    g = torch.Generator().manual_seed(0)
    S = Setup(teacher=oracle, path=oracle.path, target='velocity', data=lambda n, g: gm.sample(n, generator=g), unpack=lambda b: {'x0': b},
              batch_size=512, lr=1e-3, ema_decay=0.995, steps=steps, mf_steps=steps, pd_start=32, pd_round_steps=steps // 4,
              ct_s1=160, teacher_steps=40, teacher_batch=None, noise=torch.randn(n_pairs, 2, generator=g), noise_cond={},
              eval_noise=torch.randn(n_eval, 2, generator=torch.Generator().manual_seed(1)), eval_cond={})
    S.ict_init = lambda: TimeMLP(2, width, depth)       # consistency training has no teacher: from scratch
    ref = gm.sample(n_eval, generator=torch.Generator().manual_seed(2))
    S.metric = lambda x: sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
    S.floor = S.metric(gm.sample(n_eval, generator=torch.Generator().manual_seed(3)))
    with Clock() as c:                                     # base: a 1-rectified flow regressed onto the exact velocity
        torch.manual_seed(0)
        def base_loss(m, x0, g):
            x1 = torch.randn(x0.shape, generator=g); t = sample_t(len(x0), generator=g)
            return fm_loss(m, lambda x, t: oracle.predict(x, t, 'velocity'), x0, x1, t)
        S.base_net = S.fit(TimeMLP(2, width, depth), base_loss, steps)
    S.base_cost = c
    return S


def digits_setup(mode):
    from diffkit.classifier import digits_quality, digits_split
    from diffkit.zoo import load_zoo
    T = load_zoo('digits_unet_s')
    xtr, ytr, _, _ = digits_split(0)
    data, unpack = pack(x0=xtr, y=ytr)
    steps, n_pairs, n_eval, pd_start, teacher_steps = dict(smoke=(4, 16, 20, 4, 4), quick=(20, 40, 200, 16, 20), full=(400, 2000, 1000, 32, 20))[mode]
    g = torch.Generator().manual_seed(10)
    S = Setup(teacher=T, path=T.path, target=T.target, data=data, unpack=unpack, batch_size=64, lr=1e-4, ema_decay=0.995,
              steps=steps, mf_steps=steps // 2, pd_start=pd_start, pd_round_steps=steps // 2, ct_s1=80, teacher_steps=teacher_steps,
              teacher_batch=250, noise=torch.randn(n_pairs, 1, 16, 16, generator=g), noise_cond={'y': torch.arange(n_pairs) % 10},
              eval_noise=torch.randn(n_eval, 1, 16, 16, generator=torch.Generator().manual_seed(1)), eval_cond={'y': torch.arange(n_eval) % 10})
    S.base_net = T.net
    S.ict_init = lambda: copy.deepcopy(T.net)            # ECT-style: consistency training initialised from the diffusion model
    S.quality = lambda x: digits_quality(x.clamp(-1, 1), S.eval_cond['y'], verbose=False)    # prints nothing; 'fd_floor' is the floor
    S.metric = lambda x: S.quality(x)['fd']
    S.floor = None
    S.base_cost = None
    return S


def run_part(part, mode, log, which=STUDENTS):
    S = toy_setup(mode) if part == 'toy' else digits_setup(mode)
    with torch.no_grad():
        with Clock() as c:
            x = sample_dpmpp_2m(S.teacher, S.eval_noise, uniform_grid(50), extra_args=S.eval_cond)
        teacher_q = S.metric(x)
        if S.floor is None: S.floor = S.quality(x)['fd_floor']
        few = {k: S.metric(sample_dpmpp_2m(S.teacher, S.eval_noise, uniform_grid(k), extra_args=S.eval_cond)) for k in KS}
    log(f"{part}: teacher 50 steps {teacher_q:.4f} (floor {S.floor:.4f}), {c.wall:.0f} s wall {c.cpu:.0f} s CPU; "
        f"1, 2, 4 steps {', '.join(f'{v:.4f}' for v in few.values())}")
    table, cost = students(S, log, which)
    res = evaluate(S, table, log)
    res = {'teacher, DPM-Solver++(2M) (no training)': few, **res}
    table = {'teacher, DPM-Solver++(2M) (no training)': dict(steps=0, wall=0., cpu=0.), **table}
    extra = f"; base 1-RF network: {S.base_cost.wall:.0f} s wall, {S.base_cost.cpu:.0f} s CPU" if S.base_cost else ''
    if part == 'toy':
        print_table('Eight Gaussians, exact teacher: sliced Wasserstein distance to data (n = 10000)', teacher_q, S.floor, res, table, cost, extra)
    else:
        print_table(f'Digits, zoo UNet teacher: Frechet distance of classifier features (n = {len(S.eval_noise)})', teacher_q, S.floor, res, table, cost, extra)
    return teacher_q, S.floor, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--part', choices=('toy', 'digits', 'all'), default='all')
    ap.add_argument('--quick', action='store_true', help='small budgets: a few CPU-minutes')
    ap.add_argument('--smoke', action='store_true', help='tiny budgets, for the tests: seconds')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--students', default=','.join(STUDENTS),
                    help=f'comma-separated subset of {",".join(STUDENTS)} (insta trains rf2 first); default: all')
    a = ap.parse_args()
    which = tuple(w.strip() for w in a.students.split(',') if w.strip())
    if not which or set(which) - set(STUDENTS):
        ap.error(f"--students: expected a comma-separated subset of {','.join(STUDENTS)}, got {a.students!r}")
    torch.set_num_threads(a.threads)
    log = lambda s: print(f'[{time.strftime("%H:%M:%S")}] {s}', flush=True)
    parts = ('toy', 'digits') if a.part == 'all' else (a.part,)
    out = {}
    mode = 'smoke' if a.smoke else 'quick' if a.quick else 'full'
    for p in parts: out[p] = run_part(p, mode, log, which)
    fields = []
    student = lambda res: {n: q for n, q in res.items() if not n.startswith('teacher')}
    if 'toy' in out:
        tq, floor, res = out['toy']
        best1 = min((q[1] for q in student(res).values() if 1 in q), default=math.nan)
        fields += [f'toy_sw1_over_floor={best1 / floor:.3f}', f'toy_sw_teacher_over_floor={tq / floor:.3f}', f'toy_floor={floor:.4f}']
    if 'digits' in out:
        tq, floor, res = out['digits']
        best1, best4 = (min((q[k] for q in student(res).values() if k in q), default=math.nan) for k in (1, 4))
        fields += [f'digits_fd1_over_teacher={best1 / tq:.3f}', f'digits_fd4_over_teacher={best4 / tq:.3f}', f'digits_fd_teacher={tq:.3f}',
                   f'digits_fd_floor={floor:.3f}']
    if which != STUDENTS: fields.append(f"students={','.join(which)}")
    print('RESULT ' + ' '.join(fields) + ('' if mode == 'full' else f' mode={mode}'))


if __name__ == '__main__':
    main()
