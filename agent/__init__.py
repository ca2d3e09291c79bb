"""micagent agent layer: the LangGraph acquisition loop.

Where a frame is made, decided and stored:
- graph.py         StateGraph wiring (one node per module in nodes/), SQLite checkpointer
- state.py         the small checkpointed state; context.py the heavy live objects
- acquirer.py      the only caller of the microscope during a session (incl. pipelining)
- nodes/           connect, check_instrument, plan, acquire, assess_quality, classify,
                   rescan, adjudicate, approve (interrupt), record, finish
- policy.py        the one place that decides: rulings on calibrated probabilities, the OOD
                   flag (label "unknown"), adjudications and human decisions, and the
                   graph's routers that follow them; quality.py focus/SNR/drift
- objectives.py    survey grids and hunt spirals; overview.py windows of a stage-less overview
- adjudication/    few-shot VLM (openai client), offline kNN stand-in, demonstrations, cache
- recorder.py      session-file writes off the acquisition path; scratch.py frames in flight
- session.py       a session put together and run/resumed; driver.py interrupt <-> broker
- approval_request.py  typed requests to a human and their decisions; approval_broker.py,
  terminal_approval.py  where front-ends meet them
"""
