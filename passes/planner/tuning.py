"""Every constant the budget search (search.py) uses, each with the reason it has that value.

No constant here may be chosen because it makes one model's benchmark pass (docs/planner.md);
where a figure was measured, the measurement is in docs/BENCHMARKS.md, not here.
"""

REPAIR_ROUNDS = 6
"""Verify-and-re-solve rounds before the search settles for the lowest simulated peak it has built:
each round asks for strictly less than the last and costs one extraction (the most expensive planning
step), so the cap bounds planning time at a few times one solve."""

CHAIN_ROUNDS = 4
"""Lazy-constraint rounds of a solve (chains.solve_with_chains): each adds, at the step where the exact
account of the plan peaks, the recompute chains the static windows missed. Each costs one solve (a
fraction of one extraction); chains repeat per layer, so a few rounds find the classes that matter.
Chosen among 1, 2 and 4 on hf-gpt2, hf-t5 and resnet-bn (fewer gave higher floors and no faster planning,
docs/BENCHMARKS.md "Recompute chains"); other models may want another value."""

HOLD_TERMS = False
"""Whether the chain rows also charge kept storages held past their reads by later recomputes
(chains.HoldTerm): valid for every plan, and on hf-gpt2 they lowered the simulated floor, but CBC's
solves with them hit their time limits and planning took 5-50x longer (docs/BENCHMARKS.md, "Hold
terms"); off until CBC bounds them well."""

SOLVE_NODES = 300
"""CBC's branch-and-bound nodes per solve (its ``maxNodes``). A node count, not seconds, stops a solve at the
same plan on every machine and under any load, so one budget on one model always gets one plan (the user's
``solver_time_limit`` stays as a backstop, and warns). A bound on time, not a figure tuned for a plan: the search
checks every plan against the simulator and corrects the model by its rounds, so proving the model's last percent
buys nothing the rounds do not. At 2,000 nodes (the first cap: the same plans as 5,000 or none on the zoo at 0.0),
300 and 100, the grid's 104 plans below 1.0 were the same but one (hf-t5 at a 10.83 MB byte budget: 10.68 -> 10.75
MB, still met), while smallest-peak solves that ran to 1,000-1,300 nodes (16 ms a node) stop: hf-llama's floor
planned in 51 s instead of 117 s (docs/BENCHMARKS.md, "Beside the solves"). 300 rather than 100: the same plans and
time on the zoo, with more room on larger graphs."""

REFINE_NODES = 100
"""The node cap of a solve that refines a plan CBC is handed as its start (a time solve started from a floor
plan that meets its budget) or has just found (the lower-peak solve after a time solve): it can only improve
on that plan, and without a cap CBC spent its whole time limit proving the last percent (hf-bert at 0.0: five
20 s solves). At 100 and at 500 the searches on hf-gpt2 and hf-bert at 0.0 ended on the same plans."""

SOLVER_GAP_TIME = 0.01
"""Added time, as a share of the forward's recompute time, a plan may spend beyond the fastest plan under its
budget to lower its peak: CBC stops at a 1% gap (ilp._GAP_REL), so this only takes back what the gap may have
left. A fraction may also spend up to what torch's own plan at that fraction adds (search._lower_peak_at_same_time):
the rival's trade of time for memory at the same budget, not a figure of this module."""

FRACTION_SLACK = 0.02
"""Share of the default's simulated peak by which a fraction plan may exceed its target, and within which
of the floor a fraction plans the floor itself (so low fractions share one plan). NOT principled: it absorbs
the simulator's error on the toy models. At 0 (a fraction's target met as a byte budget's is), the planning-only
zoo moved four floors by -2.1% to +3.1% (three of them up: the repair rounds accept other plans, so the floor's
local moves start elsewhere), and two 0.5 plans the slack had snapped to the floor by +14% and +21% (docs/BENCHMARKS.md,
"torch's time, not a swept allowance")."""

CERTIFY_ABOVE_FLOOR = True
"""A fraction's target far above the floor is shown so by CBC's root plan of the smallest-peak problem, and the
floor's full solve is left until a stage needs it (search._certify_above_floor). A switch, not a figure: off,
every fraction solves the floor first."""

CERTIFY_PUMP_ROUNDS = 1
"""Major rounds of CBC's feasibility pump in the certificate's root-only solve (``ilp.pump_tune``; CBC's default is
six, None keeps it). After a round finds a plan the pump starts again with a tighter cutoff; a solve stopped at
its root only has to show a plan far enough under the target, and where CBC proves the root plan it is within the
solve's gap either way. The later rounds took about half of that solve's time on gpt-24, and found no better
plan there (docs/BENCHMARKS.md, "More starts for the local moves at the floor": why not every solve)."""

MONOTONE_ANCHOR = 0.5
"""A fraction below it whose plan the simulator finds above the model's figure also runs the search at
this fraction and takes the lower of the two plans: the model's error grows with the recompute it
under-counts, so a lower budget could otherwise run above a higher one. torch's default budget's middle;
it doubles the planning of low fractions where the model under-counts, and only there."""

REPEAT_MIN_CANDIDATES: int | None = None
"""Candidates from which the search ties repeated layers (planner/repeat.py); None: never. Off because tying
did not make CBC faster where it was measured (a 48-layer Llama-like graph: CBC's time goes to the LP
relaxation, whose rows tying does not remove) while it cost added time (docs/BENCHMARKS.md, "Issue 19");
it turns on once the tied problem is also smaller in rows, not only in binaries."""

REPEAT_GROUPS = 4
"""Runs of consecutive layers per class that keep their own decision: a budget between two uniform plans
is then met by recomputing a value in a quarter, half or three quarters of the layers, so tying costs at
most a quarter of one value's recompute time over the stack, and the binaries stay 4 per class."""

POLISH_STARTS = REPAIR_ROUNDS
"""Plans the local moves start from at the floor (search._polish): the chosen plan, then the lowest others the
search built. The moves descend to the nearest plan no single move lowers, so the start decides the end. As many
as the plans the repair rounds from the floor build, one per round. Each start descends fully: on the zoo at 0.0
six full descents lowered two floors by about 4% (hf-gpt2-deep, mlp-mixer) over descents sharing the first one's
accounts, at about the same planning time (docs/BENCHMARKS.md, "Views, broadcasts and full descents")."""

LOCAL_MOVES = 50
"""Moves of the local search against the exact account (local.py) on a smallest-peak plan; 0 turns it off.
A bound on time, not a tuned figure: a move tries each storage live at the account's peak (one account,
about 2 ms on hf-gpt2, each), and the search stops as soon as no move lowers the peak; on the zoo 50 moves
found plans equal to or lower than 20 moves with a 0.1% minimum gain did (docs/BENCHMARKS.md, "Local
moves"), at under a second per search."""

POLISH_FROM_ALL_RECOMPUTE = True
"""Whether the local moves at the floor also start from the plan that recomputes all it can (local.max_recompute),
the far end of the keep/recompute range from the plans the solves build. A switch, not a figure: one more descent
and one more build, and the lowest simulated plan runs, so it never raises a floor."""
