// Test harness for one streaming accelerator `qfab_top` (as Amaranth writes it: ports clk, rst,
// i__payload/i__valid/i__ready, o__payload/o__valid/o__ready).
//
// Python never touches a cycle: inputs are preloaded from a hex file ($readmemh), the harness
// streams them in, optionally with random input gaps and output stalls (an xorshift generator per
// side, probability STALL/65536), captures every output beat and the cycle it arrived, and writes
// both to hex files when the last beat is in. A watchdog ends a run in which no beat has moved for
// WATCHDOG cycles. Counts, stall probability and seed are plusargs (qfab_n_in, qfab_n_out,
// qfab_stall, qfab_seed, qfab_watchdog; files qfab_in, qfab_out, qfab_time). cocotb only starts the clock, releases reset and waits for `done` or `stalled`.
module qfab_harness #(
    parameter integer IN_W = 8,
    parameter integer OUT_W = 8,
    parameter integer MAX_IN = 1,
    parameter integer MAX_OUT = 1,
    parameter integer ACT_W = 1     // width of the design's `activity` port (with QFAB_ACTIVITY)
) (
`ifdef QFAB_INTERNAL_CLOCK
    output reg  clk,
`else
    input  wire clk,
`endif
    input  wire rst,
    output reg  done,
    output reg  stalled,
    output reg  finished,
    output reg  [31:0] cycle,
    output reg  [31:0] in_count,
    output reg  [31:0] out_count,
    output reg  [31:0] first_in_cycle,
    output reg  [31:0] idle_cycles,
    output reg  [31:0] gap_cycles,     // cycles in which a random gap held back an input beat
    output reg  [31:0] hold_cycles,    // cycles in which a random stall held back a valid output beat
    output reg  [32*ACT_W-1:0] counters // per bit of the design's `activity` port: cycles it was 1
);
`ifdef QFAB_INTERNAL_CLOCK
    // the clock toggles inside the simulator: no callback into Python per cycle
    initial clk = 0;
    always #5 clk = ~clk;
`endif

    reg [IN_W-1:0]  in_mem  [0:MAX_IN-1];
    reg [OUT_W-1:0] out_mem [0:MAX_OUT-1];
    reg [31:0]      out_time [0:MAX_OUT-1];
    string in_file, out_file, time_file;
    // run-time settings (plusargs), so one Verilator build serves every input set
    integer N_IN = 0, N_OUT = 0, STALL = 0, SEED = 1, WATCHDOG = 100000;

    initial begin
        void'($value$plusargs("qfab_n_in=%d", N_IN));
        void'($value$plusargs("qfab_n_out=%d", N_OUT));
        void'($value$plusargs("qfab_stall=%d", STALL));
        void'($value$plusargs("qfab_seed=%d", SEED));
        void'($value$plusargs("qfab_watchdog=%d", WATCHDOG));
        if ($value$plusargs("qfab_in=%s", in_file)) $readmemh(in_file, in_mem);
        if (!$value$plusargs("qfab_out=%s", out_file)) out_file = "out.hex";
        if (!$value$plusargs("qfab_time=%s", time_file)) time_file = "time.hex";
    end

    // xorshift32, one generator per side so the two stall patterns are independent
    function automatic [31:0] xorshift(input [31:0] x);
        reg [31:0] y;
        begin
            y = x ^ (x << 13);
            y = y ^ (y >> 17);
            xorshift = y ^ (y << 5);
        end
    endfunction
    reg [31:0] rng_in, rng_out;
    wire gap  = (STALL > 0) && (rng_in[15:0]  < STALL[15:0]);
    wire hold = (STALL > 0) && (rng_out[15:0] < STALL[15:0]);

    reg              i_valid;
    wire             i_ready;
    wire [OUT_W-1:0] o_payload;
    wire             o_valid;
    wire             o_ready = !hold && !done;
    wire [IN_W-1:0]  i_payload = in_mem[in_count];

`ifdef QFAB_ACTIVITY
    wire [ACT_W-1:0] activity;
`else
    wire [ACT_W-1:0] activity = 0;
`endif

    qfab_top dut (
        .clk(clk), .rst(rst),
        .i__payload(i_payload), .i__valid(i_valid), .i__ready(i_ready),
        .o__payload(o_payload), .o__valid(o_valid), .o__ready(o_ready)
`ifdef QFAB_ACTIVITY
        , .activity(activity)
`endif
    );

    // the design's activity bits (a beat moved / waited at a stage port) counted per cycle
    integer k;
    always @(posedge clk) begin
        if (rst) counters <= 0;
        else for (k = 0; k < ACT_W; k = k + 1)
            if (activity[k]) counters[32*k +: 32] <= counters[32*k +: 32] + 1;
    end

    wire in_fire  = i_valid && i_ready;
    wire out_fire = o_valid && o_ready;

    always @(posedge clk) begin
        if (rst) begin
            done <= 0; stalled <= 0; cycle <= 0; in_count <= 0; out_count <= 0;
            first_in_cycle <= 0; idle_cycles <= 0; i_valid <= 0; gap_cycles <= 0; hold_cycles <= 0;
            rng_in <= SEED; rng_out <= SEED ^ 32'h9E3779B9;
        end else if (!done && !stalled) begin
            cycle <= cycle + 1;
            rng_in <= xorshift(rng_in);
            rng_out <= xorshift(rng_out);
            // valid stays up until its beat is taken (stream rule); a gap only delays the next one
            if (!i_valid || in_fire) begin
                if (in_fire) in_count <= in_count + 1;
                i_valid <= ((in_fire ? in_count + 1 : in_count) < N_IN) && !gap;
                if (((in_fire ? in_count + 1 : in_count) < N_IN) && gap) gap_cycles <= gap_cycles + 1;
            end
            if (hold && o_valid) hold_cycles <= hold_cycles + 1;
            if (in_fire && in_count == 0) first_in_cycle <= cycle;
            if (out_fire) begin
                out_mem[out_count] <= o_payload;
                out_time[out_count] <= cycle;
                out_count <= out_count + 1;
                if (out_count + 1 == N_OUT) done <= 1;
            end
            idle_cycles <= (in_fire || out_fire) ? 0 : idle_cycles + 1;
            if (idle_cycles >= WATCHDOG && !(in_fire || out_fire)) stalled <= 1;
        end
    end

    // one cycle after the run ends, every captured beat is in memory: write the files
    always @(posedge clk) begin
        if (rst) finished <= 0;
        else if ((done || stalled) && !finished) begin
            $writememh(out_file, out_mem);
            $writememh(time_file, out_time);
            finished <= 1;
        end
    end
endmodule
