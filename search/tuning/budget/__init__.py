"""``--time-budget``: plan the whole job to finish within a wall-clock budget, keep to it, and spend it.

The budget counts from the process's start. After the data stage and the activation
extraction (their time counts), a short calibration times a few epochs of the dearest
trial shape the space allows on the cached activations (deepest cached unfreeze depth,
widest head) and of the cheapest, per backbone, and the dearest whole image model's
forward pass per film, trace and save, and the stress test's re-rendering per film.
From those figures the planner picks Hyperband's ``max_epochs`` (at most the run's
``--max-epochs``; ``--factor`` is kept) and the retrain (top-k, variants, epochs, priced
per ``--retrain-from``) so that search + retrain + the stages after it (priced from the
films they go through, ``tail``) are predicted to end at ``AIM`` of the budget. The plan
is printed before the first trial and saved as ``RUN_DIR/plan.json``.

Keeping to it and spending it, at each stage boundary: the oracle starts no trial once
the search's share is spent, nor one predicted to overrun it (:class:`Deadline`, checked
in ``populate_space``, the hook KerasTuner's search loop ends on, of a subclass of its
``HyperbandOracle``); when the search ends the retrain is planned again from what is
left (:func:`retrain_plan`), and given a deadline, the moment the stages after it must
start: no epoch begins that would end after it, and more seeds per winner train while
it leaves time; after the retrain the time left is checked against their price. Each
boundary's figures and decision go into ``plan.json``. The best model so far is always
retrained, assembled, evaluated and exported, even when that overruns.

By role: ``hyperband`` is Hyperband's arithmetic (:func:`~hyperband.hyperband_rounds`), pure;
``plan`` the plan (:func:`~plan.plan`, :func:`~plan.retrain_plan`), pure; ``tail`` prices the
stages after the retrain, pure;
``deadline`` keeps the search to its share (the oracle); ``calibrate`` times trial shapes
and the image model on this machine; ``driver`` is the job's clock, which drives them
(:class:`~driver.Budget`).
"""
