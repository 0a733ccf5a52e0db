"""`make bench`: the bot's real job path (queue → worker process → results) against a plain
diffusers loop on the same model, device and inputs, without Discord.

Modules: `direct` (the plain loop, in its own process), `fullpath` (JobService + WorkerClient
+ Store + a recording delivery), `monitor` (event-loop lag and RSS sampling), `report`
(statistics and printing), `sd15_random` (an SD 1.5-sized random model for GPU runs).
The bench process itself never imports torch, so its RSS is the bot side's.
"""
