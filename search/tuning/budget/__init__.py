"""``--time-budget``: plan the whole job to finish within a wall-clock budget, and keep to it.

After the data stage and the activation extraction (their time counts), a short
calibration times a few epochs of the dearest trial shape the space allows on the
cached activations (deepest cached unfreeze depth, widest head) and of the cheapest,
per backbone. From those figures the planner picks Hyperband's ``max_epochs`` (at
most the run's ``--max-epochs``; ``--factor`` is kept) and the retrain (top-k,
variants, epochs) so that search + retrain + final model, evaluation and export are
predicted to fit the budget with a margin. The plan is printed before the first
trial and saved as ``RUN_DIR/plan.json``.

Keeping to it: the oracle starts no trial once the search's share is spent, nor one
predicted to overrun it (:class:`Deadline`, checked in ``populate_space``, the hook
KerasTuner's search loop ends on, of a subclass of its ``HyperbandOracle``); the retrain
is planned again from what is left when the search ends (:func:`retrain_plan`), down to
the rank-1 configuration
trained once, as searched. The best model so far is always retrained, assembled,
evaluated and exported, even when that overruns.

By role: ``plan`` is the arithmetic (:func:`~plan.hyperband_rounds`, :func:`~plan.plan`,
:func:`~plan.retrain_plan`), pure; ``deadline`` keeps the search to its share (the oracle);
``calibrate`` times trial shapes on this machine; ``driver`` is the job's clock, which
drives the three (:class:`~driver.Budget`).
"""
