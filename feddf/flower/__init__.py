"""FedDF on Flower (flwr >= 1.42, Message API): the same rounds as `feddf train`, in Flower's simulation engine or in a
real SuperLink + SuperNodes deployment.

    feddf flower local --nodes 3 --archs cnn,resnet8 --clients 3 --fraction 1 --rounds 2 --distill-source noise \
        --train-limit 600 --test-limit 500 --local-epochs 1 --distill-steps 20 --eval-every 10 --out runs/flower-demo

Modules (import flwr only through these; `pip install 'feddf[flower]'`):
  wire.py        state_dict <-> ArrayRecord (fp32 on the wire, dtypes restored on load), TrainConfig <-> JSON.
  strategy.py    `FedDF`, a subclass of Flower's FedAvg: one global model per architecture, each node sent its own
                 architecture's model, replies grouped by architecture and fused by feddf.federated.fusion.fuse.
  client_app.py  the ClientApp: QUERY (partition id / architecture of the node) and TRAIN (fusion.client_step).
  server_app.py  the ServerApp: learns the nodes, runs the strategy, writes the `feddf train` run folder.
  worker.py      a long-lived ClientApp process per SuperNode (`--isolation process`): imports and the loaded
                 partition stay across messages (Flower's flwr-clientapp handles one message and exits).
  supernode.py   flower-supernode with a shorter idle poll (Flower's loop sleeps a hard-coded 3 s).
  options.py     the checks of the Flower options (--min-replies, timeouts, poll interval), shared by the CLI,
                 the launcher and the ServerApp.
  launch.py      `feddf flower simulate|local`: starts a SuperLink (+ SuperNodes and their workers) on 127.0.0.1,
                 runs the app, reads the run's status, stops every process it started.
  app/           the Flower App (pyproject.toml) that `flwr run` ships to the SuperLink.
"""
