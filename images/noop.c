/* noop: a static binary that does nothing; the benchmark's unit of exec cost. */
int main(void)
{
    return 0;
}
