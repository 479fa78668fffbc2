"""Real-model workloads shared by `vat bench` and `vat tune`: the shapes file (`shapes`) and one
public host-API call per (op, model, token count) with its reference and roofline traffic (`ops`)."""
