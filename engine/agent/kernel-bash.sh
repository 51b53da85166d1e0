# A stateful session's shell: one bash whose variables, functions and working directory persist
# between executions. Started by the agent (engine/agent/kernel.py) as the sandbox user.
#
# Each line on the control descriptor is one cell: words whose bytes are escaped as \0ooo (decoded
# by printf's %b, a builtin: nothing here is evaluated but the cell itself): the file to source,
# the working directory to enter ("-": stay), then NAME=VALUE pairs to export. When the cell ends,
# {"done": CODE} goes to the results descriptor.
IFS=, read -r __isol8_control __isol8_results <<<"$ISOL8_KERNEL_FDS"
unset ISOL8_KERNEL_FDS
readonly __isol8_control __isol8_results
while IFS=' ' read -r -a __isol8_cell -u "$__isol8_control"; do
  printf -v __isol8_path '%b' "${__isol8_cell[0]}"
  printf -v __isol8_cwd '%b' "${__isol8_cell[1]}"
  for __isol8_pair in "${__isol8_cell[@]:2}"; do
    printf -v "${__isol8_pair%%=*}" '%b' "${__isol8_pair#*=}" && export "${__isol8_pair%%=*}"
  done
  if [ "$__isol8_cwd" != - ]; then cd -- "$__isol8_cwd" || true; fi
  # shellcheck disable=SC1090
  source "$__isol8_path"
  printf '{"done": %d}\n' "$?" >&"$__isol8_results"
done
