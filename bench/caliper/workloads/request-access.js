'use strict';

// RequestAccess by a clinician to a patient's record (each patient has one, granted to every
// clinician): the decision is logged in the patient's chain.

const { EhrWorkload } = require('./common');

class RequestAccess extends EhrWorkload {
    async submitTransaction() {
        const i = this.pick(this.roundArguments.records.length);
        const clinicians = this.roundArguments.clinicians;
        const clinician = clinicians[(this.workerIndex + this.sent * this.totalWorkers) % clinicians.length];
        await this.send({
            contractId: this.roundArguments.contract,
            contractFunction: 'RequestAccess',
            contractArguments: [this.roundArguments.records[i]],
            invokerIdentity: clinician.alias,
            invokerMspId: clinician.msp,
            readOnly: false,
        }, i);
    }
}

module.exports.createWorkloadModule = () => new RequestAccess();
